"""The public Cache API over the in-memory tier: values, keys, limits, get_or_set."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pitchey_cache import (
    Cache,
    CacheError,
    CommandError,
    InvalidKeyError,
    Settings,
    UnsupportedValueError,
    ValueTooLargeError,
)
from pitchey_cache.cache import MAX_KEY_BYTES
from pitchey_cache.tiers import MemoryTier
from tests.unit.fakes import FakeClock
from tests.unit.values import ROUND_TRIP_VALUES, exact

MISSING: Any = object()


def memory_tier(clock: FakeClock) -> MemoryTier:
    return MemoryTier(max_entries=10_000, max_bytes=16 * 1024 * 1024, clock=clock)


def fake_clock(settings: Settings) -> FakeClock:
    # The health checker's sleeps park until a test advances the clock by hand.
    return FakeClock(park_sleeps_from=settings.health_check_interval_ms / 1000)


@pytest.fixture
def settings() -> Settings:
    return Settings(cache_enabled=False, max_value_bytes=1024)


@pytest.fixture
def clock(settings: Settings) -> FakeClock:
    return fake_clock(settings)


@pytest.fixture
def memory(clock: FakeClock) -> MemoryTier:
    return memory_tier(clock)


@pytest.fixture
async def cache(settings: Settings, memory: MemoryTier, clock: FakeClock) -> AsyncIterator[Cache]:
    async with Cache(settings, tiers=[memory], clock=clock) as started:
        yield started


# -- values -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
async def test_every_json_value_and_bytes_round_trip_exactly(cache: Cache, value: Any) -> None:
    await cache.set("k", value)
    assert exact(await cache.get("k", MISSING)) == exact(value)
    assert exact((await cache.get_many(["k"]))["k"]) == exact(value)


@pytest.mark.parametrize("value", [None, False, 0, 0.0, "", [], {}, b""], ids=repr)
async def test_stored_falsy_values_are_hits_not_misses(cache: Cache, value: Any) -> None:
    await cache.set("k", value)
    assert exact(await cache.get("k", default=MISSING)) == exact(value)
    assert await cache.exists("k") is True
    assert await cache.get_many(["k"]) == {"k": value}
    assert cache.counters.hits == 2
    assert cache.counters.misses == 0


async def test_a_miss_returns_the_default(cache: Cache) -> None:
    assert await cache.get("absent") is None
    assert await cache.get("absent", MISSING) is MISSING
    assert await cache.get("absent", default=7) == 7
    assert cache.counters.misses == 3


async def test_get_many_returns_only_present_keys(cache: Cache) -> None:
    await cache.set_many({"a": 1, "b": None, "c": {"x": [1]}}, ttl=60)
    found = await cache.get_many(["a", "b", "missing", "c", "a"])
    assert found == {"a": 1, "b": None, "c": {"x": [1]}}
    assert await cache.get_many([]) == {}


async def test_values_are_isolated_from_later_mutation(cache: Cache) -> None:
    value: dict[str, Any] = {"title": "original", "tags": ["a"]}
    await cache.set("k", value)
    value["title"] = "changed"
    value["tags"].append("b")
    first = await cache.get("k")
    assert first == {"title": "original", "tags": ["a"]}
    first["tags"].append("c")
    assert await cache.get("k") == {"title": "original", "tags": ["a"]}


async def test_unsupported_value_is_refused_and_nothing_stored(
    cache: Cache, memory: MemoryTier
) -> None:
    with pytest.raises(UnsupportedValueError):
        await cache.set("k", {1, 2})
    assert memory.entry_count == 0


async def test_non_string_key_is_refused(cache: Cache) -> None:
    with pytest.raises(InvalidKeyError):
        await cache.get(42)  # type: ignore[arg-type]


# -- the value size limit --------------------------------------------------------------


async def test_value_at_the_limit_is_stored(cache: Cache) -> None:
    # CACHE_MAX_VALUE_BYTES is 1024 here; a 1022-character string encodes to 1024 bytes.
    assert await cache.set("k", "x" * 1022) is True
    assert await cache.get("k") == "x" * 1022


@pytest.mark.parametrize("value", ["x" * 1023, b"x" * 1024, {"k": "x" * 2000}], ids=len)
async def test_value_over_the_limit_raises_before_anything_is_stored(
    cache: Cache, memory: MemoryTier, value: Any
) -> None:
    with pytest.raises(ValueTooLargeError) as caught:
        await cache.set("big", value)
    assert caught.value.key == "big"
    assert caught.value.limit == 1024
    assert "CACHE_MAX_VALUE_BYTES=1024" in str(caught.value)
    assert memory.entry_count == 0
    assert cache.counters.sets == 0


async def test_set_many_with_one_oversized_value_stores_none_of_them(
    cache: Cache, memory: MemoryTier
) -> None:
    with pytest.raises(ValueTooLargeError):
        await cache.set_many({"small": 1, "big": "x" * 2000, "other": 2})
    assert memory.entry_count == 0


async def test_get_or_set_does_not_store_an_oversized_loaded_value(
    cache: Cache, memory: MemoryTier
) -> None:
    async def loader() -> str:
        return "x" * 2000

    with pytest.raises(ValueTooLargeError):
        await cache.get_or_set("big", loader)
    assert memory.entry_count == 0


# -- keys and the prefix ----------------------------------------------------------------


async def test_keys_get_the_prefix(cache: Cache, memory: MemoryTier) -> None:
    await cache.set("pitch:42", {"title": "..."})
    assert await memory.get("pitchey:pitch:42") == b'{"title":"..."}'
    assert await memory.exists(["pitch:42"]) == 0


async def test_start_logs_contradictory_settings(
    clock: FakeClock, memory: MemoryTier, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env(
        {
            "CACHE_ENABLED": "false",
            "REDIS_CLUSTER_ENABLED": "true",
            "REDIS_CLUSTER_NODES": "127.0.0.1:7001",
            "REDIS_CONNECTION_POOL_SIZE": "10",
        },
        env_file=None,
    )
    with caplog.at_level("WARNING", logger="pitchey_cache"):
        async with Cache(settings, tiers=[memory], clock=clock):
            pass
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("REDIS_CLUSTER_ENABLED=true is ignored" in line for line in logged)
    assert any("REDIS_CONNECTION_POOL_SIZE=10 has no effect" in line for line in logged)


async def test_custom_prefix(clock: FakeClock, memory: MemoryTier) -> None:
    settings = Settings(cache_enabled=False, key_prefix="myapp")
    async with Cache(settings, tiers=[memory], clock=clock) as cache:
        await cache.set("k", 1)
        await cache.incr("n")
    assert await memory.exists(["myapp:k", "myapp:n"]) == 2


async def test_delete_pattern_stays_inside_a_prefix_with_glob_characters(
    clock: FakeClock, memory: MemoryTier
) -> None:
    settings = Settings(cache_enabled=False, key_prefix="app[1]*")
    # Keys another application (another prefix) keeps in the same store. Each would
    # match if the prefix were used as a pattern without escaping.
    others = ["app1:k", "app1:pitches:1", "app1zz:k", "appX:k", "app[1]*x:k", "other:k"]
    for key in others:
        await memory.set(key, b"1", 60, False)
    async with Cache(settings, tiers=[memory], clock=clock) as cache:
        await cache.set_many({"pitches:1": 1, "pitches:2": 2, "users:1": 3})
        assert await memory.exists(["app[1]*:pitches:1"]) == 1

        assert await cache.delete_pattern("pitches:*") == 2
        assert await cache.exists("users:1") is True
        assert await cache.delete_pattern("*") == 1

    assert await memory.exists(others) == len(others)
    assert memory.entry_count == len(others)


async def test_delete_pattern_matches_within_the_prefix_only(
    cache: Cache, memory: MemoryTier
) -> None:
    await memory.set("elsewhere:pitches:1", b"1", 60, False)
    await cache.set_many({"pitches:browse:1": 1, "pitches:browse:2": 2, "pitches:42": 3})
    assert await cache.delete_pattern("pitches:browse:*") == 2
    assert await cache.get("pitches:42") == 3
    assert await memory.exists(["elsewhere:pitches:1"]) == 1
    with pytest.raises(InvalidKeyError):
        await cache.delete_pattern("")


# -- undecodable data ------------------------------------------------------------------------

PLANTED = [
    pickle.dumps({"title": "pickled"}),
    b"\xff\xfe\x80random bytes",
    b'{"title": "truncated',
    b"",
]


@pytest.mark.parametrize("data", PLANTED, ids=repr)
async def test_planted_undecodable_bytes_are_counted_misses(
    cache: Cache, memory: MemoryTier, data: bytes
) -> None:
    await memory.set("pitchey:k", data, 60, False)

    assert await cache.get("k") is None
    assert await cache.get("k", MISSING) is MISSING
    assert await cache.get_many(["k"]) == {}
    assert cache.counters.undecodable == 3
    assert cache.counters.misses == 3
    assert cache.counters.hits == 0

    async def loader() -> str:
        return "fresh"

    # get_or_set treats it as a miss and replaces it.
    assert await cache.get_or_set("k", loader) == "fresh"
    assert await cache.get("k") == "fresh"


# -- the rest of the API ----------------------------------------------------------------------


async def test_set_uses_cache_ttl_by_default(cache: Cache, settings: Settings) -> None:
    await cache.set("k", 1)
    assert await cache.ttl("k") == settings.cache_ttl
    await cache.set("k", 1, ttl=600)
    assert await cache.ttl("k") == 600
    assert await cache.ttl("missing") == -2


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True])
async def test_bad_ttl_is_refused(cache: Cache, memory: MemoryTier, ttl: Any) -> None:
    with pytest.raises(CacheError, match="ttl"):
        await cache.set("k", 1, ttl=ttl)
    assert memory.entry_count == 0


async def test_entries_expire_on_the_clock(cache: Cache, clock: FakeClock) -> None:
    await cache.set("k", "v", ttl=10)
    clock.advance(9)
    assert await cache.get("k") == "v"
    clock.advance(1)
    assert await cache.get("k") is None


async def test_delete_counts_removed_keys(cache: Cache) -> None:
    await cache.set_many({"a": 1, "b": 2})
    assert await cache.delete("a", "b", "missing") == 2
    assert await cache.delete() == 0
    assert await cache.exists("a") is False


async def test_expire_and_ttl(cache: Cache, clock: FakeClock) -> None:
    await cache.set("k", 1, ttl=100)
    assert await cache.expire("k", 10) is True
    assert await cache.ttl("k") == 10
    assert await cache.expire("missing", 10) is False
    clock.advance(10)
    assert await cache.exists("k") is False


async def test_incr_counts_from_zero_and_reads_back_as_an_int(cache: Cache) -> None:
    assert await cache.incr("views") == 1
    assert await cache.incr("views", amount=41) == 42
    assert await cache.get("views") == 42
    await cache.set("score", 10)
    assert await cache.incr("score", -3) == 7


async def test_incr_on_a_non_integer_raises_command_error(cache: Cache) -> None:
    await cache.set("title", "text")
    with pytest.raises(CommandError):
        await cache.incr("title")
    await cache.set("blob", b"12")
    with pytest.raises(CommandError):
        await cache.incr("blob")


async def test_incr_follows_redis_64_bit_range_checks(cache: Cache) -> None:
    """What Redis refuses (ERR value is not an integer or out of range), every tier refuses.

    ``set`` stores any integer JSON can carry (orjson writes up to 2**64 - 1), as
    Redis stores the text; INCR then refuses a stored value beyond signed 64 bits.
    """
    await cache.set("u", 2**63)
    with pytest.raises(CommandError):
        await cache.incr("u", -1)
    assert await cache.get("u") == 2**63
    await cache.set("n", 5)
    for amount in (-(2**63) - 1, 2**63, 1.5, True, "1"):
        with pytest.raises(CommandError, match="signed 64-bit int"):
            await cache.incr("n", amount)  # type: ignore[arg-type]
    assert await cache.get("n") == 5
    assert await cache.incr("n", -(2**63) + 1) == -(2**63) + 6


async def test_only_if_absent_says_whether_it_stored(cache: Cache, clock: FakeClock) -> None:
    assert await cache.set("view:42:1.2.3.4", 1, ttl=3600, only_if_absent=True) is True
    assert await cache.set("view:42:1.2.3.4", 2, ttl=3600, only_if_absent=True) is False
    assert await cache.get("view:42:1.2.3.4") == 1
    clock.advance(3600)
    assert await cache.set("view:42:1.2.3.4", 3, ttl=3600, only_if_absent=True) is True


async def test_active_tier_and_repr(cache: Cache) -> None:
    assert cache.active_tier == "in-memory"
    assert "started" in repr(cache)


# -- get_or_set ---------------------------------------------------------------------------


class CountingLoader:
    """An async loader that takes a few event-loop turns, like a database query."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.calls = 0
        self._result = result
        self._error = error

    async def __call__(self) -> Any:
        self.calls += 1
        for _ in range(5):
            await asyncio.sleep(0)
        if self._error is not None:
            raise self._error
        return self._result


async def test_concurrent_misses_share_one_loader_call(cache: Cache) -> None:
    loader = CountingLoader(result={"title": "loaded"})
    results = await asyncio.gather(*(cache.get_or_set("pitch:1", loader) for _ in range(20)))
    assert loader.calls == 1
    assert results == [{"title": "loaded"}] * 20
    # Later calls are hits.
    assert await cache.get_or_set("pitch:1", loader) == {"title": "loaded"}
    assert loader.calls == 1
    assert await cache.get("pitch:1") == {"title": "loaded"}


async def test_loader_error_reaches_every_waiter_and_nothing_is_cached(
    cache: Cache, memory: MemoryTier
) -> None:
    error = RuntimeError("database unavailable")
    loader = CountingLoader(error=error)
    results = await asyncio.gather(
        *(cache.get_or_set("pitch:1", loader) for _ in range(20)), return_exceptions=True
    )
    assert loader.calls == 1
    assert all(result is error for result in results)
    assert memory.entry_count == 0
    assert await cache.exists("pitch:1") is False

    # The failure is not remembered: the next call loads again.
    retry = CountingLoader(result="ok")
    assert await cache.get_or_set("pitch:1", retry) == "ok"
    assert retry.calls == 1


async def test_get_or_set_caches_a_loaded_none(cache: Cache) -> None:
    loader = CountingLoader(result=None)
    assert await cache.get_or_set("k", loader, ttl=60) is None
    assert await cache.get_or_set("k", loader, ttl=60) is None
    assert loader.calls == 1


async def test_different_keys_load_separately(cache: Cache) -> None:
    a, b = CountingLoader(result="a"), CountingLoader(result="b")
    results = await asyncio.gather(cache.get_or_set("a", a), cache.get_or_set("b", b))
    assert list(results) == ["a", "b"]
    assert (a.calls, b.calls) == (1, 1)


# -- lifecycle -------------------------------------------------------------------------------


def _calls(cache: Cache) -> list[Callable[[], Awaitable[Any]]]:
    async def loader() -> int:
        return 1

    return [
        lambda: cache.get("k"),
        lambda: cache.set("k", 1),
        lambda: cache.delete("k"),
        lambda: cache.exists("k"),
        lambda: cache.expire("k", 10),
        lambda: cache.ttl("k"),
        lambda: cache.incr("k"),
        lambda: cache.get_many(["k"]),
        lambda: cache.set_many({"k": 1}),
        lambda: cache.delete_pattern("*"),
        lambda: cache.get_or_set("k", loader),
    ]


@pytest.mark.parametrize("index", range(11))
async def test_calling_before_start_raises_cache_error(
    settings: Settings, memory: MemoryTier, clock: FakeClock, index: int
) -> None:
    cache = Cache(settings, tiers=[memory], clock=clock)
    with pytest.raises(CacheError, match="not started"):
        await _calls(cache)[index]()
    assert memory.entry_count == 0


async def test_calling_after_close_raises_cache_error(
    settings: Settings, memory: MemoryTier, clock: FakeClock
) -> None:
    cache = Cache(settings, tiers=[memory], clock=clock)
    async with cache:
        await cache.set("k", 1)
    assert not cache.started
    with pytest.raises(CacheError, match="not started"):
        await cache.get("k")


def test_a_chain_must_end_with_the_memory_tier(settings: Settings) -> None:
    with pytest.raises(CacheError, match="in-memory"):
        Cache(settings, tiers=[])


def test_memory_only_settings_build_a_memory_only_cache(settings: Settings) -> None:
    cache = Cache(settings)
    assert cache.active_tier == "in-memory"


async def test_a_key_over_the_documented_limit_is_refused_clearly() -> None:
    async with Cache(Settings(cache_enabled=False)) as cache:
        await cache.set("k" * MAX_KEY_BYTES, 1)
        with pytest.raises(InvalidKeyError, match=f"at most {MAX_KEY_BYTES} bytes"):
            await cache.set("k" * (MAX_KEY_BYTES + 1), 1)
        with pytest.raises(InvalidKeyError):
            await cache.get("é" * MAX_KEY_BYTES)
