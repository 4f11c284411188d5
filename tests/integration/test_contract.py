"""One contract, every tier: the same assertions on the in-memory tier, a real Redis,
and Upstash's REST API (the upstash-redis tier through the gateway, in front of a real
Redis).

Two layers are checked. The tier contract (full keys, encoded bytes) is what the
router relies on, so every tier must answer it the same way. The ``Cache`` API on
top (prefix, serialization, planted data) is what users see, and must not depend
on which tier happens to serve.
"""

from __future__ import annotations

import asyncio
import pickle
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import glide
import pytest

from pitchey_cache import Cache, CacheError, CommandError, Settings, ValueTooLargeError
from pitchey_cache.devtools.local_redis import RedisServer
from pitchey_cache.tiers import MemoryTier, SingleTier, Tier, UpstashTier
from tests.integration.conftest import (
    PATIENT,
    GatewayServer,
    raw_client,
    redis_settings,
    upstash_settings,
)

# Also importable from here, where other test modules have long found them.
__all__ = ["PATIENT", "raw_client", "redis_settings", "upstash_settings"]

TIER_KINDS = ["in-memory", "native-redis", "upstash-redis"]
# The kinds with a real redis-server behind them, which a raw client can inspect.
REDIS_BACKED = ["native-redis", "upstash-redis"]

# Contract tests a tier is known to fail, by (kind, test): each runs as a strict xfail
# there, so fixing the tier makes the test fail until its entry is removed.
KNOWN_DEVIATIONS: dict[tuple[str, str], str] = {
    ("upstash-redis", "test_bytes_are_stored_behind_a_tag_and_json_as_plain_json"): (
        "UpstashTier stores a value that is not UTF-8 as \\x01 + base64 of it (JSON text "
        "cannot carry raw bytes), so Redis holds other bytes than the other tiers write; "
        "see test_upstash_tier.py for what that costs a reader on the same database"
    ),
}


def memory_tier() -> MemoryTier:
    return MemoryTier(max_entries=10_000, max_bytes=16 * 1024 * 1024)


def remote_settings(request: pytest.FixtureRequest, kind: str, **overrides: Any) -> Settings:
    """Settings whose chain starts with ``kind``, in front of the test's redis_server."""
    if kind == "upstash-redis":
        gateway: GatewayServer = request.getfixturevalue("gateway")
        token: str = request.getfixturevalue("token")
        return upstash_settings(gateway, token, **overrides)
    return redis_settings(request.getfixturevalue("redis_server"), **overrides)


def mark_known_deviation(request: pytest.FixtureRequest, kind: str) -> None:
    reason = KNOWN_DEVIATIONS.get((kind, request.function.__name__))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


async def failure_of(tier: Tier, call: Awaitable[object]) -> Exception:
    """The error a failing tier call means, mapped exactly as the router maps it."""
    try:
        await call
    except Exception as exc:  # noqa: BLE001 - whatever it raised is what gets mapped
        return exc if isinstance(exc, CacheError) else tier.translate(exc)
    pytest.fail("the call was expected to fail")


# -- the tier contract ------------------------------------------------------------


@pytest.fixture(params=TIER_KINDS)
async def tier(request: pytest.FixtureRequest) -> AsyncIterator[Tier]:
    kind: str = request.param
    mark_known_deviation(request, kind)
    if kind == "in-memory":
        yield memory_tier()
        return
    settings = remote_settings(request, kind)
    remote = UpstashTier(settings) if kind == "upstash-redis" else SingleTier(settings)
    await remote.start()
    try:
        yield remote
    finally:
        await remote.close()


async def test_get_of_a_missing_key_is_none(tier: Tier) -> None:
    assert await tier.get("t:missing") is None


async def test_set_then_get_returns_the_same_bytes(tier: Tier) -> None:
    for key, value in [("t:bin", b"\x00\xff\r\n binary"), ("t:empty", b""), ("t:json", b"{}")]:
        assert await tier.set(key, value, 60, False) is True
        assert await tier.get(key) == value


async def test_set_overwrites_and_resets_the_ttl(tier: Tier) -> None:
    await tier.set("t:k", b"old", 1000, False)
    await tier.set("t:k", b"new", 50, False)

    assert await tier.get("t:k") == b"new"
    assert 0 < await tier.ttl("t:k") <= 50


async def test_get_many_keeps_order_and_marks_missing_keys(tier: Tier) -> None:
    await tier.set("t:a", b"1", 60, False)
    await tier.set("t:c", b"3", 60, False)

    assert await tier.get_many(["t:c", "t:b", "t:a"]) == [b"3", None, b"1"]


async def test_set_many_stores_every_item_with_the_ttl(tier: Tier) -> None:
    await tier.set_many({"t:x": b"x", "t:y": b"y", "t:z": b""}, 30)

    assert await tier.get_many(["t:x", "t:y", "t:z"]) == [b"x", b"y", b""]
    for key in ("t:x", "t:y", "t:z"):
        assert 0 < await tier.ttl(key) <= 30


async def test_delete_counts_only_keys_that_existed(tier: Tier) -> None:
    await tier.set_many({"t:a": b"1", "t:b": b"2"}, 60)

    assert await tier.delete(["t:a", "t:b", "t:never"]) == 2
    assert await tier.get_many(["t:a", "t:b"]) == [None, None]
    assert await tier.delete(["t:a"]) == 0


async def test_exists_counts_present_keys(tier: Tier) -> None:
    await tier.set_many({"t:a": b"1", "t:b": b""}, 60)

    assert await tier.exists(["t:a", "t:b", "t:never"]) == 2
    assert await tier.exists(["t:never"]) == 0


async def test_expire_changes_the_ttl_of_an_existing_key_only(tier: Tier) -> None:
    await tier.set("t:k", b"v", 1000, False)

    assert await tier.expire("t:k", 20) is True
    assert 0 < await tier.ttl("t:k") <= 20
    assert await tier.expire("t:never", 20) is False
    assert await tier.ttl("t:never") == -2


async def test_ttl_tells_a_missing_key_from_one_without_expiry(tier: Tier) -> None:
    assert await tier.ttl("t:missing") == -2
    # INCR on a missing key creates it without expiry, as in Redis.
    await tier.incr("t:counter", 1)
    assert await tier.ttl("t:counter") == -1
    await tier.set("t:k", b"v", 100, False)
    assert 0 < await tier.ttl("t:k") <= 100


async def test_a_key_is_gone_once_its_ttl_has_passed(tier: Tier) -> None:
    await tier.set("t:short", b"v", 1, False)
    await tier.set("t:long", b"v", 60, False)

    deadline = asyncio.get_running_loop().time() + 3.0
    while await tier.get("t:short") is not None:
        assert asyncio.get_running_loop().time() < deadline, "a 1 s TTL outlived 3 s"
        await asyncio.sleep(0.1)

    assert await tier.ttl("t:short") == -2
    assert await tier.exists(["t:short"]) == 0
    assert await tier.get("t:long") == b"v"


async def test_incr_counts_from_zero_by_any_amount(tier: Tier) -> None:
    assert await tier.incr("t:n", 1) == 1
    assert await tier.incr("t:n", 41) == 42
    assert await tier.incr("t:n", -50) == -8
    assert await tier.get("t:n") == b"-8"


async def test_incr_keeps_the_expiry(tier: Tier) -> None:
    await tier.set("t:n", b"5", 100, False)

    assert await tier.incr("t:n", 2) == 7
    assert 0 < await tier.ttl("t:n") <= 100


async def test_incr_on_a_non_integer_is_a_command_error_and_changes_nothing(tier: Tier) -> None:
    await tier.set("t:text", b'"hello"', 60, False)
    await tier.set("t:float", b"1.5", 60, False)

    for key in ("t:text", "t:float"):
        error = await failure_of(tier, tier.incr(key, 1))
        assert isinstance(error, CommandError), error
    assert await tier.get("t:text") == b'"hello"'
    assert await tier.get("t:float") == b"1.5"


async def test_set_only_if_absent_stores_once(tier: Tier) -> None:
    assert await tier.set("t:once", b"first", 60, True) is True
    assert await tier.set("t:once", b"second", 60, True) is False
    assert await tier.get("t:once") == b"first"


async def test_delete_matching_follows_redis_globs(tier: Tier) -> None:
    keys = ["g:a1", "g:a2", "g:b1", "g:c1", "g:ab", "h:a1"]
    await tier.set_many(dict.fromkeys(keys, b"v"), 60)

    assert await tier.delete_matching("g:a?") == 3  # g:a1 g:a2 g:ab
    assert await tier.delete_matching("g:[bc]1") == 2
    assert await tier.delete_matching("g:*") == 0
    assert await tier.get_many(keys) == [None, None, None, None, None, b"v"]


async def test_delete_matching_honours_escaped_glob_characters(tier: Tier) -> None:
    literal = ["e:*", "e:?", "e:[x]", "e:\\"]
    lookalikes = ["e:a", "e:x", "e:ab"]
    await tier.set_many(dict.fromkeys(literal + lookalikes, b"v"), 60)

    assert await tier.delete_matching("e:\\*") == 1
    assert await tier.delete_matching("e:\\?") == 1
    assert await tier.delete_matching("e:\\[x\\]") == 1
    assert await tier.delete_matching("e:\\\\") == 1
    assert await tier.get_many(literal) == [None] * len(literal)
    assert await tier.get_many(lookalikes) == [b"v"] * len(lookalikes)


async def test_delete_matching_walks_more_keys_than_one_scan_batch(tier: Tier) -> None:
    await tier.set_many({f"m:{i}": b"v" for i in range(2500)}, 60)
    await tier.set("n:0", b"v", 60, False)

    assert await tier.delete_matching("m:*") == 2500
    assert await tier.exists(["m:0", "m:1249", "m:2499"]) == 0
    assert await tier.get("n:0") == b"v"


async def test_ping_answers(tier: Tier) -> None:
    await tier.ping()


async def test_a_lock_is_taken_once_and_released_only_by_its_owner(tier: Tier) -> None:
    assert await tier.acquire_lock("t:lock", "owner", 10_000) is True
    assert await tier.acquire_lock("t:lock", "other", 10_000) is False
    assert await tier.release_lock("t:lock", "other") is False
    assert await tier.exists(["t:lock"]) == 1
    assert await tier.release_lock("t:lock", "owner") is True
    assert await tier.release_lock("t:lock", "owner") is False
    assert await tier.acquire_lock("t:lock", "other", 10_000) is True


async def test_a_lock_expires_after_its_ttl(tier: Tier) -> None:
    assert await tier.acquire_lock("t:lock", "owner", 150) is True
    await asyncio.sleep(0.4)
    assert await tier.acquire_lock("t:lock", "next", 10_000) is True
    assert await tier.release_lock("t:lock", "owner") is False  # the old owner's is gone


# -- the Cache API, on each tier ------------------------------------------------------


class RawView(Protocol):
    """The backend behind a cache, seen without the cache: full keys, stored bytes."""

    async def get(self, key: str) -> bytes | None: ...

    async def plant(self, key: str, value: bytes) -> None: ...


class MemoryView:
    def __init__(self, memory: MemoryTier) -> None:
        self._memory = memory

    async def get(self, key: str) -> bytes | None:
        return await self._memory.get(key)

    async def plant(self, key: str, value: bytes) -> None:
        await self._memory.set(key, value, 600, False)


class RedisView:
    def __init__(self, client: glide.GlideClient) -> None:
        self.client = client

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)

    async def plant(self, key: str, value: bytes) -> None:
        await self.client.set(key, value)


@dataclass
class Target:
    """A started cache over one kind of tier, the backend seen raw, and more caches on it."""

    kind: str
    cache: Cache
    raw: RawView
    make_cache: Callable[..., Cache]


@pytest.fixture(params=TIER_KINDS)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    kind: str = request.param
    mark_known_deviation(request, kind)
    if kind == "in-memory":
        memory = memory_tier()

        def make_memory_cache(**overrides: Any) -> Cache:
            # Several caches may share one memory tier, as they share one Redis below.
            return Cache(Settings(cache_enabled=False, **overrides), tiers=[memory])

        cache = make_memory_cache()
        async with cache:
            yield Target("in-memory", cache, MemoryView(memory), make_memory_cache)
        return

    client = await raw_client(request.getfixturevalue("redis_server"))

    def make_remote_cache(**overrides: Any) -> Cache:
        return Cache(remote_settings(request, kind, **overrides))

    try:
        async with make_remote_cache() as cache:
            yield Target(kind, cache, RedisView(client), make_remote_cache)
            # Every assertion above must have been answered by Redis, not by the fallback.
            stats = await cache.stats()
            assert stats["activeTier"] == kind
            assert stats["failovers"] == 0
            assert stats["tiers"][0]["operations"]["failed"] == 0
    finally:
        await client.close()


VALUES: list[Any] = [
    {"title": "Heat", "tags": ["crime", "la"], "budget": 60_000_000, "rating": 8.3},
    [1, "two", 3.5, None, True, {"nested": []}],
    "plain text with unicode: café ✓ 映画",
    "",
    0,
    -17,
    2**62,
    1.25,
    True,
    False,
    None,
    {},
    [],
    b"",
    b"\x00starts with the bytes tag",
    b'{"looks": "like json"}',
    bytes(range(256)),
]


async def test_values_round_trip_exactly(target: Target) -> None:
    cache = target.cache
    for index, value in enumerate(VALUES):
        await cache.set(f"value:{index}", value)
    for index, value in enumerate(VALUES):
        got = await cache.get(f"value:{index}", default="<miss>")
        assert got == value
        assert type(got) is type(value)


async def test_falsy_stored_values_are_hits_not_misses(target: Target) -> None:
    cache = target.cache
    falsy: dict[str, Any] = {"none": None, "false": False, "zero": 0, "empty": "", "bytes": b""}
    await cache.set_many(falsy)

    for key, value in falsy.items():
        assert await cache.get(key, default="<miss>") == value
        assert await cache.exists(key)
    assert await cache.get_many([*falsy, "absent"]) == falsy
    stats = await cache.stats()
    assert stats["cache"]["hits"] == 2 * len(falsy)
    assert stats["cache"]["misses"] == 1  # "absent", and only it


async def test_keys_carry_the_prefix_on_the_backend(target: Target) -> None:
    await target.cache.set("pitch:42", {"title": "Heat"})

    assert await target.raw.get("pitchey:pitch:42") == b'{"title":"Heat"}'
    assert await target.raw.get("pitch:42") is None


async def test_bytes_are_stored_behind_a_tag_and_json_as_plain_json(target: Target) -> None:
    await target.cache.set("blob", b"\x89PNG")
    await target.cache.set("count", 7)

    assert await target.raw.get("pitchey:blob") == b"\x00\x89PNG"
    assert await target.raw.get("pitchey:count") == b"7"


async def test_missing_keys_return_the_default(target: Target) -> None:
    cache = target.cache

    assert await cache.get("absent") is None
    assert await cache.get("absent", default=0) == 0
    assert await cache.get_many(["absent", "also-absent"]) == {}
    assert not await cache.exists("absent")


async def test_many_calls_and_delete(target: Target) -> None:
    cache = target.cache
    await cache.set_many({"a": 1, "b": [2], "c": {"three": 3}}, ttl=60)

    assert await cache.get_many(["c", "a", "zz", "a"]) == {"c": {"three": 3}, "a": 1}
    assert 0 < await cache.ttl("b") <= 60
    assert await cache.delete("a", "b", "zz") == 2
    assert await cache.get_many(["a", "b", "c"]) == {"c": {"three": 3}}
    assert await cache.delete() == 0


async def test_expire_and_ttl(target: Target) -> None:
    cache = target.cache
    await cache.set("k", "v", ttl=600)

    assert 590 <= await cache.ttl("k") <= 600
    assert await cache.expire("k", 30) is True
    assert 0 < await cache.ttl("k") <= 30
    assert await cache.expire("absent", 30) is False
    assert await cache.ttl("absent") == -2
    await cache.incr("views")
    assert await cache.ttl("views") == -1


async def test_default_ttl_is_cache_ttl(target: Target) -> None:
    await target.cache.set("k", "v")

    assert 290 <= await target.cache.ttl("k") <= 300


async def test_incr_counts_on_stored_integers_and_keeps_the_expiry(target: Target) -> None:
    cache = target.cache
    await cache.set("views:42", 10, ttl=120)

    assert await cache.incr("views:42") == 11
    assert await cache.incr("views:42", amount=5) == 16
    assert await cache.get("views:42") == 16
    assert 0 < await cache.ttl("views:42") <= 120
    assert await cache.incr("views:new", amount=-3) == -3


async def test_incr_on_text_raises_command_error(target: Target) -> None:
    await target.cache.set("title", "Heat")

    with pytest.raises(CommandError):
        await target.cache.incr("title")
    assert await target.cache.get("title") == "Heat"


async def test_only_if_absent_stores_once(target: Target) -> None:
    cache = target.cache

    assert await cache.set("seen:42:1.2.3.4", 1, ttl=3600, only_if_absent=True) is True
    assert await cache.set("seen:42:1.2.3.4", 2, ttl=3600, only_if_absent=True) is False
    assert await cache.get("seen:42:1.2.3.4") == 1


async def test_delete_pattern_stays_within_the_prefix(target: Target) -> None:
    cache = target.cache
    await cache.set_many({"pitches:browse:1": 1, "pitches:browse:2": 2, "pitches:detail:1": 3})
    # Lookalikes written by someone else: no prefix, another prefix, a longer prefix.
    outsiders = ["pitches:browse:1", "other:pitches:browse:1", "pitcheyX:pitches:browse:1"]
    for key in outsiders:
        await target.raw.plant(key, b"1")

    assert await cache.delete_pattern("pitches:browse:*") == 2

    assert await cache.get_many(["pitches:browse:1", "pitches:browse:2"]) == {}
    assert await cache.get("pitches:detail:1") == 3
    for key in outsiders:
        assert await target.raw.get(key) == b"1", key


async def test_delete_pattern_escapes_glob_characters_in_the_prefix(target: Target) -> None:
    globby = target.make_cache(key_prefix="p*[1]?")
    neighbour = target.make_cache(key_prefix="px1y")
    async with globby, neighbour:
        await globby.set("item", "mine")
        await neighbour.set("item", "theirs")

        assert await globby.delete_pattern("*") == 1

        assert await globby.get("item") is None
        assert await neighbour.get("item") == "theirs"
        assert await target.raw.get("px1y:item") == b'"theirs"'


async def test_delete_pattern_matches_the_key_part_as_a_glob(target: Target) -> None:
    cache = target.cache
    await cache.set_many({"a*b": 1, "axb": 2, "a?": 3, "ab": 4})

    assert await cache.delete_pattern("a\\*b") == 1
    assert await cache.delete_pattern("a\\?") == 1
    assert await cache.get_many(["a*b", "axb", "a?", "ab"]) == {"axb": 2, "ab": 4}


PLANTED: dict[str, bytes] = {
    "pickle": pickle.dumps({"admin": True}),
    "random": b"\xff" + random.Random(20241024).randbytes(63),
    "bad-json": b'{"title": "Heat", ',
    "empty": b"",
    # Shaped like get_or_set's envelope (0x02, header, newline, value), but broken.
    "envelope-no-header": b"\x02garbage",
    "envelope-bad-value": b"\x02[1,0,0,1e300,{}]\n\x80\x81",
}


async def test_planted_values_are_counted_misses_never_exceptions(target: Target) -> None:
    cache = target.cache
    for name, payload in PLANTED.items():
        await target.raw.plant(f"pitchey:planted:{name}", payload)
    keys = [f"planted:{name}" for name in PLANTED]

    for key in keys:
        assert await cache.get(key, default="<miss>") == "<miss>"
    assert await cache.get_many(keys) == {}

    counters = (await cache.stats())["cache"]
    assert counters["undecodable"] == 2 * len(PLANTED)
    assert counters["misses"] == 2 * len(PLANTED)
    assert counters["hits"] == 0


async def test_get_or_set_replaces_a_planted_value(target: Target) -> None:
    await target.raw.plant("pitchey:pitch:7", PLANTED["pickle"])

    async def load() -> dict[str, str]:
        return {"title": "Ronin"}

    assert await target.cache.get_or_set("pitch:7", load) == {"title": "Ronin"}
    assert await target.cache.get("pitch:7") == {"title": "Ronin"}


async def test_tags_invalidate_their_entries_on_every_slot(target: Target) -> None:
    cache = target.cache
    for i in range(40):
        await cache.set(f"browse:{i}", i, 60, tags=["browse"])
        await cache.set(f"other:{i}", i, 60)

    async def load() -> str:
        return "loaded"

    assert await cache.get_or_set("browse:page", load, 60, tags=["browse", "home"]) == "loaded"
    assert await cache.get("browse:3") == 3
    await cache.invalidate_tags("browse")

    assert await cache.get_many([f"browse:{i}" for i in range(40)] + ["browse:page"]) == {}
    assert await cache.get_many([f"other:{i}" for i in range(40)]) == {
        f"other:{i}": i for i in range(40)
    }


async def test_get_or_set_with_lock_makes_one_call_and_releases_the_lock(target: Target) -> None:
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "loaded"

    results = await asyncio.gather(
        *(target.cache.get_or_set("locked", load, 60, lock=True) for _ in range(10))
    )
    assert results == ["loaded"] * 10
    assert calls == 1
    assert not await target.cache.exists("__lock__:locked")


async def test_get_or_set_shares_one_loader_call_among_concurrent_misses(target: Target) -> None:
    calls = 0
    release = asyncio.Event()

    async def load() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "loaded"

    waiters = [asyncio.create_task(target.cache.get_or_set("slow", load)) for _ in range(10)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=5.0)

    assert results == ["loaded"] * 10
    assert calls == 1
    assert await target.cache.get("slow") == "loaded"


async def test_a_value_over_the_limit_is_refused_before_anything_is_sent(target: Target) -> None:
    small = target.make_cache(max_value_bytes=1024)
    async with small:
        with pytest.raises(ValueTooLargeError):
            await small.set("big", "x" * 2000)
        with pytest.raises(ValueTooLargeError):
            await small.set_many({"fine": 1, "big": b"x" * 2000})

        assert await target.raw.get("pitchey:big") is None
        assert await target.raw.get("pitchey:fine") is None
        await small.set("fits", "x" * 1000)
        assert await small.get("fits") == "x" * 1000


# -- A real redis-server behind the cache (native or through the gateway) -------------


@pytest.fixture(params=REDIS_BACKED)
async def redis_target(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[tuple[Cache, glide.GlideClient]]:
    client = await raw_client(redis_server)
    try:
        async with Cache(remote_settings(request, request.param)) as cache:
            yield cache, client
    finally:
        await client.close()


async def test_delete_pattern_scans_and_never_sends_keys(
    redis_target: tuple[Cache, glide.GlideClient],
) -> None:
    cache, client = redis_target
    await client.custom_command(["CONFIG", "RESETSTAT"])
    await cache.set_many({f"pitches:browse:{i}": i for i in range(50)})

    assert await cache.delete_pattern("pitches:browse:*") == 50

    commandstats = await client.custom_command(["INFO", "commandstats"])
    assert isinstance(commandstats, bytes)
    assert b"cmdstat_scan:" in commandstats
    assert b"cmdstat_keys:" not in commandstats


async def test_a_key_of_another_redis_type_is_a_miss_not_an_exception(
    redis_target: tuple[Cache, glide.GlideClient],
) -> None:
    # Someone else's list or hash under our prefix is planted data like any other:
    # reading it is a miss, as `get_many` already treats it.
    cache, client = redis_target
    await client.lpush("pitchey:planted:list", ["a"])
    await client.hset("pitchey:planted:hash", {"f": "v"})

    assert await cache.get_many(["planted:list", "planted:hash"]) == {}
    assert await cache.get("planted:list", default="<miss>") == "<miss>"
    assert await cache.get("planted:hash", default="<miss>") == "<miss>"
