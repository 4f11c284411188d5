"""The in-memory tier answers as Redis does: the same random calls, compared one by one.

Each seed drives a seeded random sequence of ``Cache`` calls, over awkward keys
(multi-byte UTF-8, glob characters, CRLF, NUL, a long key, the empty key) and
awkward values (64-bit edges, bytes, nested JSON), on three caches: memory only
(CACHE_ENABLED=false), ``native-redis`` on a real redis-server, and
``upstash-redis`` through the gateway in front of that server (each under its own
key prefix). Every answer, and every error's type, must be the same on the three.
A failing step reports the seed, the step and the calls before it, so the run can
be replayed by seed.

Deliberate differences, left out of the comparison with the reason:

- ``ttl``: the calls reach the three caches a few milliseconds apart, so a TTL
  may round to a neighbouring second; it must agree within one second (missing
  -2 and no-expiry -1 must agree exactly).

A second test compares the glob matcher the in-memory tier and the router use
with SCAN MATCH on the real server, over many random patterns.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from pitchey_cache import Cache, CacheError, Secret, Settings
from pitchey_cache.devtools.local_redis import RedisServer
from pitchey_cache.globs import key_matcher
from tests.integration.conftest import GatewayServer

SEEDS = range(6)
STEPS = 250
# Long enough that TTL-1 keys set or expired just before are gone on every backend.
EXPIRY_WAIT_S = 1.3
PATIENT: dict[str, Any] = {"command_timeout_ms": 3000, "connect_timeout_ms": 3000}

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
KEY_TEXT = ["a", "b", "é", "日", "😀", "*", "?", "[", "]", "\\", "^", "-", "\r\n", " ", "\x00", ":"]
KEYS = [
    "a",
    "b",
    "ab",
    "é",
    "ée",
    "日本",
    "😀",
    "*",
    "?",
    "[a]",
    "a\\b",
    "line1\r\nline2",
    "nul\x00byte",
    "",
    "x" * 3000,
    "é" * 1000,
]
INT_EDGES = [0, 1, -1, 41, INT64_MAX, INT64_MAX - 1, INT64_MIN, INT64_MIN + 1, 2**63, 2**64 - 1]
AMOUNTS: list[Any] = [1, -1, 0, 7, INT64_MAX, INT64_MIN, 2**63, INT64_MIN - 1, 1.5, True]


def random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(KEY_TEXT + list(string.ascii_letters)) for _ in range(size))


def random_value(rng: random.Random, depth: int = 0) -> Any:  # noqa: PLR0911 - one per kind
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(INT_EDGES)
    if kind == 1:
        return rng.choice([0.5, -0.0, 1e308, 5e-324, 0.1, -2.5, float(2**63)])
    if kind == 2:
        return random_text(rng, rng.choice([0, 1, 5, 300]))
    if kind == 3:
        return rng.choice([b"", b"\x00", b"\xff\xfe\x80", b"12", "é".encode(), rng.randbytes(64)])
    if kind == 4:
        return rng.choice([True, False, None, "12", "-0", "007"])
    if kind == 5:
        return rng.choice(["", "x" * 5000, str(INT64_MAX)])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {random_text(rng, 3): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [[[[[[{"deep": [None]}]]]]]]


def random_pattern(rng: random.Random) -> str:
    """A glob: built from an existing key (so it often matches), or from glob tokens."""
    if rng.random() < 0.5:
        key = rng.choice(KEYS)[:20]
        out = []
        for char in key:
            roll = rng.random()
            if roll < 0.2:
                out.append("?" * rng.choice([1, len(char.encode())]))
            elif roll < 0.3:
                out.append("*")
            elif char in "*?[]\\":
                out.append("\\" + char)
            else:
                out.append(char)
        return "".join(out) or "*"
    tokens = ["*", "?", "[a-z]", "[^a]", "[é]", "[\\]]", "\\*", "\\?", "[", *KEY_TEXT]
    return "".join(rng.choice(tokens) for _ in range(rng.randint(1, 5)))


@dataclass(frozen=True)
class Call:
    """One Cache call, as a description for reports and a function of the cache."""

    text: str
    run: Callable[[Cache], Awaitable[Any]]
    is_ttl: bool = False


def random_call(rng: random.Random) -> Call:  # noqa: PLR0911 - one branch per operation
    key = rng.choice(KEYS)
    short = repr(key) if len(key) < 30 else f"<{len(key)}-char key>"
    roll = rng.randrange(100)
    if roll < 18:
        return Call(f"get({short})", lambda c: c.get(key, "MISSING"))
    if roll < 38:
        value = random_value(rng)
        absent = rng.random() < 0.2
        return Call(
            f"set({short}, {value!r:.60}, only_if_absent={absent})",
            lambda c: c.set(key, value, 3600, only_if_absent=absent),
        )
    if roll < 50:
        amount = rng.choice(AMOUNTS)
        return Call(f"incr({short}, {amount!r})", lambda c: c.incr(key, amount))
    if roll < 56:
        keys = rng.sample(KEYS, rng.randint(1, 3))
        return Call(f"delete(*{len(keys)} keys)", lambda c: c.delete(*keys))
    if roll < 62:
        return Call(f"exists({short})", lambda c: c.exists(key))
    if roll < 68:
        seconds = rng.choice([100, 3600])
        return Call(f"expire({short}, {seconds})", lambda c: c.expire(key, seconds))
    if roll < 74:
        return Call(f"ttl({short})", lambda c: c.ttl(key), is_ttl=True)
    if roll < 82:
        keys = rng.sample(KEYS, rng.randint(1, 5))
        return Call(f"get_many({len(keys)} keys)", lambda c: c.get_many(keys))
    if roll < 88:
        items = {k: random_value(rng) for k in rng.sample(KEYS, rng.randint(1, 4))}
        return Call(f"set_many({len(items)} items)", lambda c: c.set_many(items, 3600))
    pattern = random_pattern(rng)
    return Call(f"delete_pattern({pattern!r:.60})", lambda c: c.delete_pattern(pattern))


def expiring_calls(rng: random.Random) -> list[Call]:
    """Keys given a 1-second TTL, by set and by expire; the caller then waits them out."""

    def set_briefly(key: str) -> Call:
        return Call(f"set({key!r:.30}, ttl=1)", lambda c: c.set(key, 1, 1))

    def expire_soon(key: str) -> Call:
        return Call(f"expire({key!r:.30}, 1)", lambda c: c.expire(key, 1))

    chosen = rng.sample(KEYS, 4)
    return [set_briefly(k) for k in chosen[:2]] + [expire_soon(k) for k in chosen[2:]]


def same(a: Any, b: Any) -> bool:
    """Equal, with equal types all the way down (so True is not 1, nor 1.0 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def agree(call: Call, first: Any, other: Any) -> bool:
    if call.is_ttl and isinstance(first, int) and isinstance(other, int):
        return first == other if min(first, other) < 0 else abs(first - other) <= 1
    return same(first, other)


async def outcome(cache: Cache, call: Call) -> Any:
    """What the call returned, or the type of the CacheError it raised."""
    try:
        return await call.run(cache)
    except CacheError as exc:
        return type(exc)


@contextlib.asynccontextmanager
async def three_caches(
    server: RedisServer, gateway: GatewayServer, token: str, seed: int
) -> AsyncIterator[dict[str, Cache]]:
    prefix = f"diff{seed}"
    caches = {
        "in-memory": Cache(Settings(cache_enabled=False, key_prefix=prefix)),
        "native-redis": Cache(
            Settings(
                redis_host=server.host,
                redis_port=server.port,
                key_prefix=f"{prefix}n",
                **PATIENT,
            )
        ),
        "upstash-redis": Cache(
            Settings(
                upstash_url=gateway.url,
                upstash_token=Secret(token),
                key_prefix=f"{prefix}u",
                **PATIENT,
            )
        ),
    }
    async with contextlib.AsyncExitStack() as stack:
        for cache in caches.values():
            await stack.enter_async_context(cache)
        yield caches


async def run_seed(server: RedisServer, gateway: GatewayServer, token: str, seed: int) -> int:
    rng = random.Random(seed)
    calls = [random_call(rng) for _ in range(STEPS)]
    expiry_at = rng.randrange(STEPS // 4, STEPS * 3 // 4)
    history: list[str] = []
    compared = 0
    async with three_caches(server, gateway, token, seed) as caches:
        for kind, cache in caches.items():
            assert cache.active_tier == kind, f"{kind} is not serving: {cache!r}"
        for step, call in enumerate(calls):
            batch = [call]
            if step == expiry_at:
                # Last before the wait, so no call meets a key in its final second.
                batch = [call, *expiring_calls(rng)]
            for current in batch:
                results = {kind: await outcome(cache, current) for kind, cache in caches.items()}
                history.append(f"{step}: {current.text} -> {results['native-redis']!r:.80}")
                compared += 1
                reference = results["native-redis"]
                for kind, result in results.items():
                    assert agree(current, reference, result), (
                        f"seed {seed}, step {step}: {current.text}\n"
                        f"  native-redis: {reference!r:.200}\n  {kind}: {result!r:.200}\n"
                        "calls before it:\n  " + "\n  ".join(history[-12:-1])
                    )
            if step == expiry_at:
                await asyncio.sleep(EXPIRY_WAIT_S)
                history.append(f"{step}: slept {EXPIRY_WAIT_S} s")
        # Nothing failed over: every answer above came from the tier named.
        for kind, cache in caches.items():
            stats = await cache.stats()
            assert stats["failovers"] == 0, f"{kind} failed over during seed {seed}"
    return compared


async def test_memory_tier_answers_every_call_as_redis_and_upstash_do(
    redis_server: RedisServer, gateway: GatewayServer, token: str
) -> None:
    compared = 0
    for seed in SEEDS:
        compared += await run_seed(redis_server, gateway, token, seed)
    assert compared >= len(SEEDS) * STEPS


GLOB_KEY_TEXT = ["a", "b", "z", "A", "0", "é", "日", "😀", "*", "?", "[", "]", "\\", "^", "-"]
GLOB_KEY_TEXT += ["\r\n", " ", "\x00", "\x7f"]
GLOB_TOKENS = [*GLOB_KEY_TEXT, "*", "?", "[a-z]", "[^a]", "[é]", "[z-a]", "[\x80-\xff]", "[]"]


async def test_key_matcher_agrees_with_scan_match(redis_server: RedisServer) -> None:
    """3,000 random globs over 400 random keys: the same keys as SCAN MATCH, every time."""
    rng = random.Random(15)
    keys = {
        "".join(rng.choice(GLOB_KEY_TEXT) for _ in range(rng.randint(1, 5))) for _ in range(400)
    }
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    try:
        await client.mset({key.encode(): b"1" for key in keys})
        for _ in range(3000):
            pattern = "".join(rng.choice(GLOB_TOKENS) for _ in range(rng.randint(1, 6)))
            found = {
                raw.decode() async for raw in client.scan_iter(match=pattern.encode(), count=1000)
            }
            matches = key_matcher(pattern)
            assert {key for key in keys if matches(key)} == found, pattern
    finally:
        await client.aclose()
