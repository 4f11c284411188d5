"""get_or_set's options on a fake clock: the envelope, early refresh, stale-if-error,
cache_none, the lock between two caches sharing one remote tier, and tags."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from pitchey_cache import Cache, CacheError, Settings
from pitchey_cache.decorators import CachedFunction
from pitchey_cache.entries import ENTRY_TAG, Entry, unwrap, wrap
from pitchey_cache.serialization import Undecodable
from pitchey_cache.tiers import MemoryTier
from tests.unit.fakes import FakeClock, FakeTier, fake_tier

pytestmark = pytest.mark.unit

HEALTH_INTERVAL = 30.0


def settings() -> Settings:
    return Settings(
        health_check_interval_ms=int(HEALTH_INTERVAL * 1000), max_retries=0, key_prefix=""
    )


@contextlib.asynccontextmanager
async def memory_cache(clock: FakeClock) -> AsyncIterator[tuple[Cache, MemoryTier]]:
    memory = MemoryTier(max_entries=1000, max_bytes=1024 * 1024, clock=clock)
    async with Cache(settings(), tiers=[memory], clock=clock) as cache:
        yield cache, memory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(park_sleeps_from=HEALTH_INTERVAL)


@pytest.fixture
async def cm(clock: FakeClock) -> AsyncIterator[tuple[Cache, MemoryTier]]:
    async with memory_cache(clock) as started:
        yield started


class Loader:
    """Returns ``v1``, ``v2``... (or raises ``error`` while set); counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return f"v{self.calls}"


async def settle(turns: int = 30) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


# -- the envelope ------------------------------------------------------------------------


async def test_loaded_entries_carry_an_envelope_and_get_returns_the_value(
    cm: tuple[Cache, MemoryTier],
) -> None:
    cache, memory = cm
    assert await cache.get_or_set("loaded", Loader(), ttl=60) == "v1"
    await cache.set("plain", {"a": 1}, ttl=60)
    assert await memory.get("plain") == b'{"a":1}'
    stored = await memory.get("loaded")
    assert stored is not None
    assert stored.startswith(ENTRY_TAG)
    assert unwrap(stored).value == "v1"
    assert await cache.get("loaded") == "v1"
    assert await cache.get_many(["loaded", "plain"]) == {"loaded": "v1", "plain": {"a": 1}}


def test_a_broken_envelope_is_undecodable() -> None:
    good = wrap(b'"x"', Entry("x", computed_at=1.0, fresh_until=2.0))
    assert unwrap(good).value == "x"
    for bad in (
        ENTRY_TAG + b"no newline",
        ENTRY_TAG + b"[2,1,0,2,{}]\n1",
        ENTRY_TAG + b'["a",1,0,2,{}]\n1',
        ENTRY_TAG + b"[1,1,0,2,{}]\n",
        ENTRY_TAG + b"{]\n1",
    ):
        with pytest.raises(Undecodable):
            unwrap(bad)


async def test_an_entry_expires_at_its_ttl_while_redis_keeps_it_for_the_stale_window(
    cm: tuple[Cache, MemoryTier], clock: FakeClock
) -> None:
    cache, _ = cm
    await cache.get_or_set("k", Loader(), ttl=60, stale_if_error=30)
    assert await cache.ttl("k") == 90
    clock.advance(61)
    assert await cache.get("k") is None
    assert await cache.exists("k")


# -- stale_if_error ----------------------------------------------------------------------


async def test_stale_if_error_serves_the_old_value_for_n_seconds_then_raises(
    cm: tuple[Cache, MemoryTier], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache, _ = cm
    loader = Loader()
    assert await cache.get_or_set("k", loader, ttl=60, stale_if_error=30) == "v1"
    loader.error = RuntimeError("database down")
    clock.advance(70)
    with caplog.at_level(logging.ERROR, logger="pitchey_cache"):
        assert await cache.get_or_set("k", loader, ttl=60, stale_if_error=30) == "v1"
    assert cache.counters.stale_served == 1
    assert "database down" in caplog.text
    body = (await cache.stats())["cache"]
    assert (body["loads"], body["staleServed"]) == (2, 1)
    clock.advance(25)  # 95 s after it was computed: past 60 + 30
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get_or_set("k", loader, ttl=60, stale_if_error=30)
    loader.error = None
    assert await cache.get_or_set("k", loader, ttl=60, stale_if_error=30) == "v4"


async def test_without_stale_if_error_the_loaders_error_propagates(
    cm: tuple[Cache, MemoryTier], clock: FakeClock
) -> None:
    cache, _ = cm
    loader = Loader()
    await cache.get_or_set("k", loader, ttl=60)
    loader.error = RuntimeError("database down")
    clock.advance(61)
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get_or_set("k", loader, ttl=60)
    assert cache.counters.stale_served == 0


# -- cache_none --------------------------------------------------------------------------


async def test_cache_none_false_returns_none_without_storing_it(
    cm: tuple[Cache, MemoryTier],
) -> None:
    cache, _ = cm
    calls = 0

    async def not_found() -> None:
        nonlocal calls
        calls += 1

    assert await cache.get_or_set("404", not_found, cache_none=False) is None
    assert await cache.get_or_set("404", not_found, cache_none=False) is None
    assert calls == 2
    assert not await cache.exists("404")
    assert await cache.get_or_set("404", not_found) is None
    assert await cache.get_or_set("404", not_found) is None
    assert calls == 3


# -- early refresh -----------------------------------------------------------------------


async def test_early_refresh_recomputes_in_the_background_before_expiry(
    cm: tuple[Cache, MemoryTier], clock: FakeClock
) -> None:
    cache, _ = cm
    loader = Loader()
    assert await cache.get_or_set("hot", loader, ttl=60, early_refresh=True) == "v1"
    clock.advance(50)  # the window is the last 5% of the TTL for a fast loader
    assert await cache.get_or_set("hot", loader, ttl=60, early_refresh=True) == "v1"
    await settle()
    assert loader.calls == 1
    clock.advance(8)
    loader.gate = asyncio.Event()
    # Inside the window: the current value now, one refresh behind it.
    results = [await cache.get_or_set("hot", loader, ttl=60, early_refresh=True) for _ in range(5)]
    assert results == ["v1"] * 5
    await settle()
    assert loader.calls == 2
    loader.gate.set()
    await settle()
    assert cache.counters.refreshes == 1
    clock.advance(30)  # past the first value's expiry: the refreshed one serves
    assert await cache.get("hot") == "v2"
    assert loader.calls == 2


async def test_a_failed_refresh_keeps_the_current_value(
    cm: tuple[Cache, MemoryTier], clock: FakeClock
) -> None:
    cache, _ = cm
    loader = Loader()
    await cache.get_or_set("hot", loader, ttl=60, early_refresh=True)
    loader.error = RuntimeError("slow database")
    clock.advance(58)
    options: dict[str, Any] = {"early_refresh": True, "stale_if_error": 30}
    assert await cache.get_or_set("hot", loader, ttl=60, **options) == "v1"
    await settle()
    assert cache.counters.refresh_failures == 1
    assert cache.counters.stale_served == 0  # nothing stale was served: v1 is fresh
    assert await cache.get("hot") == "v1"


def test_the_refresh_window_follows_the_loader_time() -> None:
    slow = Entry("v", computed_at=0.0, load_seconds=0.2, fresh_until=2.0)
    assert slow.refresh_ahead() == pytest.approx(0.4)
    fast = Entry("v", computed_at=0.0, load_seconds=0.001, fresh_until=300.0)
    assert fast.refresh_ahead() == pytest.approx(15.0)
    glacial = Entry("v", computed_at=0.0, load_seconds=50.0, fresh_until=60.0)
    assert glacial.refresh_ahead() == pytest.approx(30.0)


# -- the lock, two "processes" sharing one remote tier -----------------------------------


@dataclass
class Pair:
    a: Cache
    b: Cache
    remote: FakeTier
    clock: FakeClock


@contextlib.asynccontextmanager
async def two_processes() -> AsyncIterator[Pair]:
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL)
    remote = fake_tier("native-redis")
    caches = [
        Cache(
            settings(),
            tiers=[remote, MemoryTier(max_entries=100, max_bytes=65536, clock=clock)],
            clock=clock,
        )
        for _ in range(2)
    ]
    async with caches[0] as a, caches[1] as b:
        yield Pair(a, b, remote, clock)


async def test_with_lock_one_loader_call_across_caches_and_the_waiter_gets_its_value() -> None:
    async with two_processes() as p:
        loader_a, loader_b = Loader(), Loader()
        loader_a.gate = asyncio.Event()
        first = asyncio.create_task(p.a.get_or_set("k", loader_a, ttl=60, lock=True))
        await settle()
        assert any(k.endswith("__lock__:k") for k in p.remote.data)
        second = asyncio.create_task(p.b.get_or_set("k", loader_b, ttl=60, lock=True))
        await settle()
        assert p.b.counters.lock_waits >= 1
        loader_a.gate.set()
        assert await first == "v1"
        assert await second == "v1"
        assert (loader_a.calls, loader_b.calls) == (1, 0)
        assert not any("__lock__" in k for k in p.remote.data)  # released by its owner


async def test_a_lock_never_released_is_taken_over_after_the_waiters_deadline() -> None:
    async with two_processes() as p:
        # Another process took the lock and died; the fake tier never expires it.
        assert await p.remote.acquire_lock("__lock__:k", "dead-owner", 2000)
        loader = Loader()
        assert await p.b.get_or_set("k", loader, ttl=60, lock=True, lock_ttl=2) == "v1"
        assert loader.calls == 1
        assert p.remote.data["__lock__:k"] == b"dead-owner"  # not ours: left to expire


async def test_with_the_remote_down_the_lock_is_this_processs_single_flight() -> None:
    async with two_processes() as p:
        p.remote.down = True
        loader = Loader()
        results = await asyncio.gather(
            *(p.a.get_or_set("k", loader, ttl=60, lock=True) for _ in range(10))
        )
        assert results == ["v1"] * 10
        assert loader.calls == 1


# -- tags --------------------------------------------------------------------------------


async def test_invalidating_a_tag_drops_its_entries_and_only_those(
    cm: tuple[Cache, MemoryTier],
) -> None:
    cache, _ = cm
    loader = Loader()
    await cache.set("browse:1", [1], ttl=60, tags=["browse"])
    await cache.set("browse:2", [2], ttl=60, tags=["browse", "new"])
    await cache.set("pitch:1", {"t": 1}, ttl=60, tags=["pitch"])
    await cache.set("untagged", 1, ttl=60)
    assert await cache.get_or_set("browse:3", loader, ttl=60, tags=["browse"]) == "v1"
    assert await cache.get("browse:1") == [1]
    await cache.invalidate_tags("browse")
    assert await cache.get("browse:1") is None
    assert await cache.get_many(["browse:2", "pitch:1", "untagged"]) == {
        "pitch:1": {"t": 1},
        "untagged": 1,
    }
    assert await cache.get_or_set("browse:3", loader, ttl=60, tags=["browse"]) == "v2"
    # A new entry of the tag is valid again after the invalidation.
    await cache.set("browse:1", [10], ttl=60, tags=["browse"])
    assert await cache.get("browse:1") == [10]


async def test_an_invalidation_during_a_load_leaves_that_load_invalid(
    cm: tuple[Cache, MemoryTier],
) -> None:
    cache, _ = cm
    loader = Loader()
    loader.gate = asyncio.Event()
    load = asyncio.create_task(cache.get_or_set("b", loader, ttl=60, tags=["browse"]))
    await settle()
    await cache.invalidate_tags("browse")
    loader.gate.set()
    assert await load == "v1"  # the caller gets what it asked for...
    assert await cache.get("b") is None  # ...but nobody is served it from the cache


async def test_bad_options_are_refused_by_name(cm: tuple[Cache, MemoryTier]) -> None:
    cache, _ = cm
    loader = Loader()
    for kwargs, word in (
        ({"stale_if_error": 0}, "stale_if_error"),
        ({"stale_if_error": True}, "stale_if_error"),
        ({"lock_ttl": -1}, "lock_ttl"),
        ({"tags": "browse"}, "tags"),
        ({"tags": [""]}, "tag"),
    ):
        with pytest.raises(CacheError, match=word):
            await cache.get_or_set("k", loader, **kwargs)
    with pytest.raises(CacheError, match="tag"):
        await cache.invalidate_tags("")
    assert loader.calls == 0


def test_the_envelope_header_is_json() -> None:
    data = wrap(b"1", Entry(1, computed_at=5.0, load_seconds=0.5, fresh_until=65.0))
    header = data[1:].partition(b"\n")[0]
    assert orjson.loads(header) == [1, 5.0, 0.5, 65.0, {}]


# -- the decorator -----------------------------------------------------------------------


async def test_cached_builds_the_key_from_a_template_and_invalidates_one_entry(
    cm: tuple[Cache, MemoryTier],
) -> None:
    cache, memory = cm
    calls: list[int] = []

    @cache.cached(ttl=300, key="pitch:{pitch_id}", lock=True, early_refresh=True, stale_if_error=60)
    async def load_pitch(pitch_id: int, *, lang: str = "en") -> dict[str, Any]:
        """Load one pitch."""
        calls.append(pitch_id)
        return {"id": pitch_id, "lang": lang}

    assert load_pitch.__name__ == "load_pitch"
    assert load_pitch.__doc__ == "Load one pitch."
    assert await load_pitch(1) == {"id": 1, "lang": "en"}
    assert await load_pitch(pitch_id=1) == {"id": 1, "lang": "en"}
    assert await load_pitch(2) == {"id": 2, "lang": "en"}
    assert calls == [1, 2]
    assert await cache.get("pitch:1") == {"id": 1, "lang": "en"}
    assert await cache.ttl("pitch:1") == 360
    assert await load_pitch.invalidate(1) is True
    assert await load_pitch.invalidate(1) is False
    assert await load_pitch(1) == {"id": 1, "lang": "en"}
    assert calls == [1, 2, 1]
    assert await memory.exists(["pitch:2"]) == 1


async def test_cached_without_a_template_keys_by_name_and_json_arguments(
    cm: tuple[Cache, MemoryTier],
) -> None:
    cache, _ = cm
    calls = 0

    @cache.cached(ttl=60)
    async def browse(page: int, genre: str | None = None) -> list[int]:
        nonlocal calls
        calls += 1
        return [page] if genre is None else [page, len(genre)]

    await browse(1)
    await browse(page=1, genre=None)
    await browse(1, "drama")
    assert calls == 2
    key = browse.key(1)
    assert key == f"{__name__}.{browse.__qualname__}:" + '{"page":1,"genre":null}'
    assert await cache.get(key) == [1]

    class Pitch:
        pass

    @cache.cached(ttl=60)
    async def by_object(pitch: Pitch) -> int:
        return id(pitch)

    with pytest.raises(CacheError, match=r"argument 'pitch' of type Pitch: pass key="):
        await by_object(Pitch())


def test_cached_refuses_what_it_cannot_key_or_run(cm: tuple[Cache, MemoryTier]) -> None:
    cache, _ = cm
    with pytest.raises(CacheError, match=r"\{pitch\} is not a parameter \(parameters: pitch_id\)"):

        @cache.cached(key="pitch:{pitch}")
        async def wrong(pitch_id: int) -> int:
            return pitch_id

    with pytest.raises(CacheError, match="async def"):

        @cache.cached()  # type: ignore[arg-type]
        def sync(pitch_id: int) -> int:
            return pitch_id

    with pytest.raises(CacheError, match="stale_if_error"):
        cache.cached(stale_if_error=-1)


async def test_cached_methods_key_by_an_attribute_of_self(cm: tuple[Cache, MemoryTier]) -> None:
    cache, _ = cm

    class PitchService:
        def __init__(self, tenant: str) -> None:
            self.tenant = tenant
            self.calls = 0

        @cache.cached(ttl=60, key="{self.tenant}:pitch:{pitch_id}")
        async def load(self, pitch_id: int) -> str:
            self.calls += 1
            return f"{self.tenant}/{pitch_id}"

    a, b = PitchService("a"), PitchService("b")
    assert await a.load(1) == "a/1"
    assert await a.load(pitch_id=1) == "a/1"
    assert await b.load(1) == "b/1"
    assert (a.calls, b.calls) == (1, 1)
    assert a.load.key(1) == "a:pitch:1"
    assert await cache.get("a:pitch:1") == "a/1"
    assert await a.load.invalidate(1) is True
    assert await a.load(1) == "a/1"
    assert a.calls == 2
    assert isinstance(PitchService.load, CachedFunction)
