"""``Cache.get``/``set`` on the native-redis tier beside raw valkey-glide, on one redis-server.

Both sides read and write the same keys and the same 100 bytes: the cache
stores a 98-character string, whose JSON encoding is 100 bytes, and the raw
client GETs those bytes and SETs them back with the same ``EX`` the cache
uses. The raw client is used as a user would: one ``GlideClient``, awaited
directly, with the ``ExpirySet`` written inline in each SET call.

The Redis tiers drive one glide client whatever REDIS_CONNECTION_POOL_SIZE
says, so ``Cache`` is measured once. Five raw clients taken in turn are the
evidence row for that decision: what extra connections buy the driver itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import glide
import orjson

from benchmarks._harness import (
    Case,
    Operation,
    Ratio,
    Sample,
    Timing,
    concurrent_rate,
    run_interleaved,
    table,
)
from pitchey_cache import Cache, Settings
from pitchey_cache.devtools.local_redis import RedisServer

CONCURRENCY = 64
VALUE_BYTES = 100
KEY_COUNT = 1000
RAW_CLIENTS = 5
TARGET_RATIO = 0.85
OPS = ("get", "set")

# A JSON string whose encoding is exactly VALUE_BYTES long.
VALUE = "v" * (VALUE_BYTES - 2)
ENCODED = orjson.dumps(VALUE)

RAW_ONE = "glide GlideClient, 1 client"
RAW_MANY = f"glide GlideClient, {RAW_CLIENTS} clients round-robin"
CACHE = "Cache (native-redis tier)"
CLIENTS = (RAW_ONE, CACHE, RAW_MANY)


@dataclass(slots=True)
class NativeRedisReport:
    """The cases as measured, and the figures derived from them."""

    cases: dict[tuple[str, str], Case]  # (client label, "get" | "set") -> case
    redis_version: str
    timing: Timing

    def ratio(self, client: str, op: str, target: float | None = None) -> Ratio:
        """``client`` against raw glide with one client."""
        return Ratio(self.cases[client, op], self.cases[RAW_ONE, op], target)

    def targets(self) -> dict[str, Ratio]:
        """What issue 2 asks: Cache at least 0.85x one raw glide client, GET and SET."""
        return {op: self.ratio(CACHE, op, TARGET_RATIO) for op in OPS}

    def pool_evidence(self) -> dict[str, Ratio]:
        """Five raw glide clients against one: the evidence for one client per tier."""
        return {op: self.ratio(RAW_MANY, op) for op in OPS}

    def as_json(self) -> dict[str, Any]:
        return {
            "server": f"redis-server {self.redis_version}, loopback, one process",
            "concurrency": CONCURRENCY,
            "value_bytes": VALUE_BYTES,
            "keys": KEY_COUNT,
            "warmup_s": self.timing.warmup,
            "duration_s": self.timing.duration,
            "rounds": self.timing.rounds,
            "cases": [case.as_json() for case in self.cases.values()],
            "cache_vs_glide_1_client": {op: r.as_json() for op, r in self.targets().items()},
            f"glide_{RAW_CLIENTS}_clients_vs_glide_1_client": {
                op: r.as_json() for op, r in self.pool_evidence().items()
            },
        }

    def render(self) -> str:
        rows = [
            [
                client,
                op.upper(),
                f"{self.cases[client, op].best:,.0f}",
                f"{self.ratio(client, op).best:.2f}x",
                f"{self.cases[client, op].loop_cpu_us:.1f}",
                f"{self.cases[client, op].process_cpu_us:.1f}",
            ]
            for op in OPS
            for client in CLIENTS
        ]
        t = self.timing
        title = (
            f"native-redis: redis-server {self.redis_version} on loopback, {CONCURRENCY} "
            f"tasks, {VALUE_BYTES}-byte values; ops/s: best of {t.rounds} x {t.duration:g} s "
            f"(after {t.warmup:g} s warm-up); CPU: median over rounds"
        )
        header = ["client", "op", "ops/s", "vs raw 1 client", "loop CPU us/op", "process CPU us/op"]
        return "\n".join([title, "", table(header, rows)])


def raw_configuration(server: RedisServer) -> glide.GlideClientConfiguration:
    # The same request timeout as the cache's tier, so the two differ only in
    # what sits between the caller and the driver.
    return glide.GlideClientConfiguration(
        [glide.NodeAddress(server.host, server.port)],
        request_timeout=Settings().command_timeout_ms,
    )


def cache_settings(server: RedisServer) -> Settings:
    return Settings(redis_host=server.host, redis_port=server.port)


def raw_operations(
    clients: Sequence[glide.GlideClient], keys: Sequence[str]
) -> dict[str, Operation]:
    ttl = Settings().cache_ttl
    if len(clients) == 1:
        client = clients[0]

        async def get_one(i: int) -> object:
            return await client.get(keys[i % KEY_COUNT])

        async def set_one(i: int) -> object:
            expiry = glide.ExpirySet(glide.ExpiryType.SEC, ttl)
            return await client.set(keys[i % KEY_COUNT], ENCODED, expiry=expiry)

        return {"get": get_one, "set": set_one}

    turn = itertools.count()

    async def get_many(i: int) -> object:
        return await clients[next(turn) % len(clients)].get(keys[i % KEY_COUNT])

    async def set_many(i: int) -> object:
        client = clients[next(turn) % len(clients)]
        expiry = glide.ExpirySet(glide.ExpiryType.SEC, ttl)
        return await client.set(keys[i % KEY_COUNT], ENCODED, expiry=expiry)

    return {"get": get_many, "set": set_many}


def cache_operations(cache: Cache, keys: Sequence[str]) -> dict[str, Operation]:
    async def get(i: int) -> object:
        return await cache.get(keys[i % KEY_COUNT])

    async def set_(i: int) -> object:
        return await cache.set(keys[i % KEY_COUNT], VALUE)

    return {"get": get, "set": set_}


async def check_served_by(cache: Cache, tier: str, when: str) -> int:
    """Fail unless ``tier`` (the chain's first) served every call; return its successes.

    A fallback would measure the in-memory tier and call it Redis.
    """
    stats = await cache.stats()
    first = stats["tiers"][0]
    ops = first["operations"]
    if first["name"] != tier or stats["activeTier"] != tier or ops["failed"]:
        raise RuntimeError(
            f"{when}: the cache is not serving from {tier} without failures "
            f"(active tier {stats['activeTier']}, {first['name']} {ops}, "
            f"last error {first.get('lastError')!r}); the numbers would not be {tier} numbers"
        )
    for other in stats["tiers"][1:]:
        if other["operations"]["total"]:
            raise RuntimeError(f"{when}: {other['name']} served {other['operations']}")
    successful: int = ops["successful"]
    return successful


async def redis_version(client: glide.GlideClient | glide.GlideClusterClient) -> str:
    reply = await client.custom_command(["INFO", "server"])
    if isinstance(reply, dict):  # a cluster client answers per node
        reply = next(iter(reply.values()))
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    for line in text.splitlines():
        if line.startswith("redis_version:"):
            return line.partition(":")[2].strip()
    return "unknown"


def concurrent_measurer(op: Operation, timing: Timing) -> Callable[[], Awaitable[Sample]]:
    async def measure() -> Sample:
        return await concurrent_rate(op, tasks=CONCURRENCY, timing=timing)

    return measure


async def run(
    server: RedisServer, timing: Timing, progress: Callable[[str], None]
) -> NativeRedisReport:
    raw: list[glide.GlideClient] = []
    cache = Cache(cache_settings(server))
    try:
        config = raw_configuration(server)
        for _ in range(RAW_CLIENTS):
            # One at a time, so that a failed create still closes the ones before it.
            raw.append(await glide.GlideClient.create(config))  # noqa: PERF401
        await cache.start()

        prefix = cache.settings.key_prefix
        keys = [f"bench:{n}" for n in range(KEY_COUNT)]
        full_keys = [f"{prefix}:{key}" for key in keys]
        await cache.set_many(dict.fromkeys(keys, VALUE))
        # Both sides must see the same stored bytes, or the comparison is off.
        assert await raw[0].get(full_keys[0]) == ENCODED
        assert await cache.get(keys[0]) == VALUE
        before = await check_served_by(cache, "native-redis", "before measuring")

        clients: dict[str, dict[str, Operation]] = {
            RAW_ONE: raw_operations(raw[:1], full_keys),
            RAW_MANY: raw_operations(raw, full_keys),
            CACHE: cache_operations(cache, keys),
        }
        # Raw and cache cases alternate inside each round (see run_interleaved).
        cases: dict[tuple[str, str], Case] = {}
        for op in OPS:
            for client in CLIENTS:
                cases[client, op] = Case(
                    name=f"{op.upper()} {client}",
                    measure=concurrent_measurer(clients[client][op], timing),
                    details={"client": client, "op": op},
                )
        progress(f"native-redis on {server.address}: {len(cases)} cases x {timing.rounds} rounds")
        await run_interleaved(list(cases.values()), rounds=timing.rounds, progress=progress)

        after = await check_served_by(cache, "native-redis", "after measuring")
        assert after > before, "the cache's Redis tier served none of the measured calls"
        version = await redis_version(raw[0])
    finally:
        await cache.close()
        for raw_client in raw:
            await raw_client.close()
    return NativeRedisReport(cases=cases, redis_version=version, timing=timing)
