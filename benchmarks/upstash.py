"""``Cache.get``/``set`` on the upstash-redis tier beside the upstash-redis SDK, one gateway.

Both clients speak Upstash's REST protocol to the same ``pitchey-cache``
gateway (``create_gateway_app`` under uvicorn, in front of one
redis-server), in the same run, with the same 64 tasks, the same keys and
the same 100 bytes: the cache stores a 98-character string, whose JSON
encoding is 100 bytes, and the SDK GETs that text and SETs it back with the
same ``EX``. The SDK is ``upstash_redis.asyncio.Redis`` as a user makes it,
with its HTTP retries off (no request fails here) and telemetry off.

The gateway runs in a subprocess, so it shares neither the event loop nor
the GIL with the client being measured; with its access log off, since
logging each request would only slow both sides alike. On a loopback
machine the gateway is the slowest part, so the ops/s ratio mostly says
whether a client keeps it busy; the CPU time per operation of this process
(where each client does all its work) is the figure that shows each
client's own cost, and moves much less with other load.

``Cache`` is measured with the default REDIS_CONNECTION_POOL_SIZE (5
connections, what a deployment gets unless it says otherwise) and with a
pool as large as the concurrency (64); the SDK's httpx client allows 100
connections and keeps 20 alive. The ratios are evidence, with no target in
issue 4.

Run alone: ``python -m benchmarks.upstash`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import glide
import httpx
from upstash_redis.asyncio import Redis

from benchmarks._harness import Case, Operation, Ratio, Timing, run_interleaved, table
from benchmarks.single import (
    CONCURRENCY,
    ENCODED,
    KEY_COUNT,
    VALUE,
    VALUE_BYTES,
    check_served_by,
    concurrent_measurer,
    redis_version,
)
from pitchey_cache import Cache, Secret, Settings
from pitchey_cache.devtools.local_redis import LOOPBACK, RedisServer, free_port
from pitchey_cache.devtools.upstash_gateway import TOKEN_VARIABLE

OPS = ("get", "set")
WIDE_POOL = CONCURRENCY

SDK = "upstash-redis SDK (asyncio)"
CACHE = f"Cache (upstash-redis tier, pool {Settings().connection_pool_size})"
CACHE_WIDE = f"Cache (upstash-redis tier, pool {WIDE_POOL})"
CLIENTS = (SDK, CACHE, CACHE_WIDE)

# The gateway process: the same app `pitchey-cache upstash-gateway` serves, without
# the access log. Its arguments are the Redis URL and the port; the token is read
# from UPSTASH_REDIS_REST_TOKEN.
_GATEWAY_SCRIPT = """
import os, sys, uvicorn
from pitchey_cache.devtools.upstash_gateway import create_gateway_app
app = create_gateway_app(sys.argv[1], os.environ["UPSTASH_REDIS_REST_TOKEN"])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=False, log_level="warning")
"""
GATEWAY_START_TIMEOUT_S = 15.0


@dataclass(slots=True)
class UpstashReport:
    """The cases as measured, and the ratios derived from them."""

    cases: dict[tuple[str, str], Case]  # (client label, "get" | "set") -> case
    redis_version: str
    gateway: str
    timing: Timing

    def ratio(self, client: str, op: str) -> Ratio:
        """``client`` against the SDK."""
        return Ratio(self.cases[client, op], self.cases[SDK, op])

    def ratios(self) -> dict[str, Ratio]:
        """Cache over the SDK, by op and pool size, named for the runner's summary."""
        return {
            f"{op.upper()}: {client} / SDK": self.ratio(client, op)
            for client in (CACHE, CACHE_WIDE)
            for op in OPS
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "server": f"redis-server {self.redis_version}, loopback, one process",
            "gateway": self.gateway,
            "concurrency": CONCURRENCY,
            "value_bytes": VALUE_BYTES,
            "keys": KEY_COUNT,
            "warmup_s": self.timing.warmup,
            "duration_s": self.timing.duration,
            "rounds": self.timing.rounds,
            "cases": [case.as_json() for case in self.cases.values()],
            "cache_vs_sdk": {name: r.as_json() for name, r in self.ratios().items()},
        }

    def render(self) -> str:
        rows = [
            [
                client,
                *(f"{self.cases[client, op].best:,.0f}" for op in OPS),
                *(f"{self.ratio(client, op).best:.2f}x" for op in OPS),
                *(f"{self.ratio(client, op).median:.2f}x" for op in OPS),
                *(f"{self.ratio(client, op).cpu:.2f}x" for op in OPS),
                *(f"{self.cases[client, op].process_cpu_us:.0f}" for op in OPS),
            ]
            for client in CLIENTS
        ]
        t = self.timing
        title = (
            f"upstash-redis: {self.gateway}, redis-server {self.redis_version}; "
            f"{CONCURRENCY} tasks, {VALUE_BYTES}-byte values, best of {t.rounds} x "
            f"{t.duration:g} s (after {t.warmup:g} s warm-up)"
        )
        header = [
            "client",
            "GET ops/s",
            "SET ops/s",
            "GET vs SDK",
            "SET vs SDK",
            "GET per-round median",
            "SET per-round median",
            "GET CPU ratio",
            "SET CPU ratio",
            "GET CPU us/op",
            "SET CPU us/op",
        ]
        note = (
            "vs SDK: best round over the SDK's best round; per-round median: the two "
            "measured back to back; CPU ratio: the SDK's CPU per op over this client's "
            "(what a CPU-bound client would reach); CPU us/op: this process, median of rounds."
        )
        return "\n".join([title, "", table(header, rows), "", note])


@contextmanager
def gateway_process(server: RedisServer, token: str, workdir: Path) -> Iterator[str]:
    """The gateway in a subprocess in front of ``server``; yields its URL."""
    port = free_port()
    log = workdir / "gateway.log"
    with log.open("wb") as output:
        # This interpreter, a fixed script and our own arguments; no shell.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", _GATEWAY_SCRIPT, f"redis://{server.address}", str(port)],
            env={**os.environ, TOKEN_VARIABLE: token},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_listener(process, port, log)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for_listener(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited: {log.read_text(errors='replace')}")
        with socket.socket() as probe:
            if probe.connect_ex((LOOPBACK, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not listen within {GATEWAY_START_TIMEOUT_S} s")
        time.sleep(0.05)


def cache_settings(url: str, token: str, **overrides: Any) -> Settings:
    return Settings(upstash_url=url, upstash_token=Secret(token), **overrides)


def sdk_operations(sdk: Redis, keys: Sequence[str]) -> dict[str, Operation]:
    ttl = Settings().cache_ttl
    text = ENCODED.decode()

    async def get(i: int) -> object:
        return await sdk.get(keys[i % KEY_COUNT])

    async def set_(i: int) -> object:
        return await sdk.set(keys[i % KEY_COUNT], text, ex=ttl)

    return {"get": get, "set": set_}


def cache_operations(cache: Cache, keys: Sequence[str]) -> dict[str, Operation]:
    async def get(i: int) -> object:
        return await cache.get(keys[i % KEY_COUNT])

    async def set_(i: int) -> object:
        return await cache.set(keys[i % KEY_COUNT], VALUE)

    return {"get": get, "set": set_}


async def _version(server: RedisServer) -> str:
    config = glide.GlideClientConfiguration([glide.NodeAddress(server.host, server.port)])
    client = await glide.GlideClient.create(config)
    try:
        return await redis_version(client)
    finally:
        await client.close()


async def run(
    server: RedisServer, timing: Timing, progress: Callable[[str], None]
) -> UpstashReport:
    """Start a gateway in front of ``server``, measure every case, stop the gateway."""
    token = secrets.token_urlsafe(24)
    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-gateway-") as workdir,
        gateway_process(server, token, Path(workdir)) as url,
    ):
        return await _measure(server, url, token, timing, progress)


async def _measure(
    server: RedisServer,
    url: str,
    token: str,
    timing: Timing,
    progress: Callable[[str], None],
) -> UpstashReport:
    sdk = Redis(url, token, rest_retries=0, allow_telemetry=False)
    cache = Cache(cache_settings(url, token))
    wide = Cache(cache_settings(url, token, connection_pool_size=WIDE_POOL))
    try:
        await cache.start()
        await wide.start()
        prefix = cache.settings.key_prefix
        keys = [f"bench:{n}" for n in range(KEY_COUNT)]
        full_keys = [f"{prefix}:{key}" for key in keys]
        await cache.set_many(dict.fromkeys(keys, VALUE))
        # Both sides must see the same stored bytes, or the comparison is off.
        assert await sdk.get(full_keys[0]) == ENCODED.decode()
        await sdk.set(full_keys[1], ENCODED.decode())
        assert await cache.get(keys[1]) == VALUE
        before = {c: await check_served_by(c, "upstash-redis", "before") for c in (cache, wide)}

        clients = {
            SDK: sdk_operations(sdk, full_keys),
            CACHE: cache_operations(cache, keys),
            CACHE_WIDE: cache_operations(wide, keys),
        }
        cases: dict[tuple[str, str], Case] = {}
        for op in OPS:
            for client in CLIENTS:
                cases[client, op] = Case(
                    name=f"{op.upper()} {client}",
                    measure=concurrent_measurer(clients[client][op], timing),
                    details={"client": client, "op": op},
                )
        progress(f"upstash-redis via {url}: {len(cases)} cases x {timing.rounds} rounds")
        await run_interleaved(list(cases.values()), rounds=timing.rounds, progress=progress)

        for c in (cache, wide):
            after = await check_served_by(c, "upstash-redis", "after measuring")
            assert after > before[c], "the cache's Upstash tier served none of the measured calls"
    finally:
        await wide.close()
        await cache.close()
        await sdk.close()
    gateway = (
        f"gateway subprocess (uvicorn {_uvicorn_flavour()}, access log off), "
        f"httpx {httpx.__version__} on both sides"
    )
    return UpstashReport(
        cases=cases, redis_version=await _version(server), gateway=gateway, timing=timing
    )


def _uvicorn_flavour() -> str:
    """What uvicorn's "auto" settings pick here: the HTTP parser and the event loop."""
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}, {loop}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstash", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per case")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--output", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    timing = Timing(warmup=args.warmup, duration=args.duration, rounds=args.rounds)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-upstash-") as workdir,
        RedisServer(workdir=Path(workdir)) as server,
    ):
        report = asyncio.run(run(server, timing, progress))
    print()
    print(report.render())
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
