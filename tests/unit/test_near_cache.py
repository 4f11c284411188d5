"""The near cache's rules with a fake remote, fake listeners and a fake clock.

The real listeners (RESP3 connections) are tested against real servers in
``tests/integration/test_near_cache.py``; here a test drives invalidations,
listener loss and failovers by hand, at exactly the moment it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from pitchey_cache import Cache, Settings
from pitchey_cache.near import NearCache, TrackingListener
from pitchey_cache.serialization import encode
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.tiers.base import NodeHealth
from tests.unit.fakes import FakeClock, FakeTier

PREFIX = "pitchey:"


class LinkedFakeTier(FakeTier):
    """A remote the near cache listens to: it has node links, as the Redis tiers do."""

    name = "native-redis"

    @property
    def has_links(self) -> bool:
        return True


class FakeListener(TrackingListener):
    """Subscribed as soon as it starts; a test calls ``near.invalidate`` itself."""

    def start(self) -> None:
        self.subscribed = True

    async def close(self) -> None:
        self.subscribed = False


@dataclass
class Harness:
    cache: Cache
    remote: FakeTier
    clock: FakeClock
    near: NearCache

    async def figures(self) -> dict[str, Any]:
        block: dict[str, Any] = (await self.cache.stats())["near"]
        return block


@contextlib.asynccontextmanager
async def harness(remote: LinkedFakeTier | None = None, **overrides: Any) -> AsyncIterator[Harness]:
    # No heartbeats: the fake remote's links are never opened.
    values: dict[str, Any] = {
        "near_cache": True,
        "max_retries": 0,
        "max_failures": 1,
        "heartbeat_interval_ms": 0,
    }
    settings = Settings(**{**values, **overrides})
    clock = FakeClock(park_sleeps_from=0.5)
    remote = remote or LinkedFakeTier()
    memory = MemoryTier(max_entries=1000, max_bytes=1024 * 1024, clock=clock)
    cache = Cache(settings, tiers=[remote, memory], clock=clock)
    near = cache._near
    assert near is not None
    near._listener_factory = lambda address, n: FakeListener(
        address, remote.open_link, n, prefix=PREFIX
    )
    async with cache:
        yield Harness(cache, remote, clock, near)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as started:
        yield started


async def test_a_second_read_is_served_from_process_memory(h: Harness) -> None:
    h.remote.data[f"{PREFIX}k"] = encode("v")
    assert await h.cache.get("k") == "v"
    assert await h.cache.get("k") == "v"
    assert h.remote.calls["get"] == 1
    figures = await h.figures()
    assert (figures["hits"], figures["misses"], figures["fills"]) == (1, 1, 1)


async def test_a_miss_is_kept_too_until_invalidated(h: Harness) -> None:
    assert await h.cache.get("k", "miss") == "miss"
    h.remote.data[f"{PREFIX}k"] = encode("v")
    assert await h.cache.get("k", "miss") == "miss"
    h.near.invalidate([f"{PREFIX}k"])
    assert await h.cache.get("k", "miss") == "v"


async def test_a_reply_in_flight_when_its_key_is_invalidated_is_not_stored(h: Harness) -> None:
    h.remote.data[f"{PREFIX}k"] = encode("old")
    gate = h.remote.gates["get"] = asyncio.Event()
    reading = asyncio.create_task(h.cache.get("k"))
    await asyncio.sleep(0)
    # The read was sent; another client changes the key; its invalidation arrives
    # before the (old) reply does.
    h.near.invalidate([f"{PREFIX}k"])
    gate.set()
    assert await reading == "old"
    h.remote.data[f"{PREFIX}k"] = encode("new")
    assert await h.cache.get("k") == "new"
    assert (await h.figures())["refusedFills"] == 1


async def test_a_reply_in_flight_during_a_flush_is_not_stored(h: Harness) -> None:
    h.remote.data[f"{PREFIX}k"] = encode("old")
    gate = h.remote.gates["get"] = asyncio.Event()
    reading = asyncio.create_task(h.cache.get("k"))
    await asyncio.sleep(0)
    h.near.invalidate(None)  # the server's flush-all
    gate.set()
    await reading
    h.remote.gates.clear()
    h.remote.data[f"{PREFIX}k"] = encode("new")
    assert await h.cache.get("k") == "new"


async def test_own_writes_are_read_back_at_once(h: Harness) -> None:
    await h.cache.set("k", 1)
    assert await h.cache.get("k") == 1
    await h.cache.set("k", 2)
    assert await h.cache.get("k") == 2
    await h.cache.delete("k")
    assert await h.cache.get("k", "gone") == "gone"


async def test_an_own_write_refuses_a_fill_in_flight(h: Harness) -> None:
    h.remote.data[f"{PREFIX}k"] = encode("old")
    gate = h.remote.gates["get"] = asyncio.Event()
    reading = asyncio.create_task(h.cache.get("k"))
    await asyncio.sleep(0)
    await h.cache.set("k", "new")
    gate.set()
    await reading
    assert await h.cache.get("k") == "new"


async def test_a_lost_listener_flushes_and_stops_filling(h: Harness) -> None:
    await h.cache.set("k", 1)
    assert await h.cache.get("k") == 1
    listener = next(iter(h.near._listeners.values()))
    listener.subscribed = False
    h.near.listener_lost(listener.address, "test")
    assert (await h.figures())["entries"] == 0
    assert await h.cache.get("k") == 1
    assert await h.cache.get("k") == 1
    figures = await h.figures()
    assert figures["entries"] == 0
    assert figures["filling"] is False
    listener.subscribed = True
    assert await h.cache.get("k") == 1
    assert (await h.figures())["entries"] == 1


async def test_a_failover_flushes_and_nothing_is_filled_from_the_fallback(h: Harness) -> None:
    await h.cache.set("k", 1)
    assert await h.cache.get("k") == 1
    h.remote.down = True
    # One failure (max_failures=1) takes the remote out: a failover event flushes.
    assert await h.cache.get("other", "miss") == "miss"
    assert h.cache.active_tier == "in-memory"
    assert await h.cache.get("k", "miss") == "miss"
    figures = await h.figures()
    assert figures["entries"] == 0
    assert figures["filling"] is False


async def test_a_reply_served_by_the_next_tier_after_a_failure_is_not_stored() -> None:
    async with harness(max_failures=5) as h:
        h.remote.failing.add("get")
        # The remote fails this call (not yet down): memory answers, and that is not kept.
        assert await h.cache.get("k", "miss") == "miss"
        assert h.cache.active_tier == "native-redis"
        h.remote.failing.clear()
        h.remote.data[f"{PREFIX}k"] = encode("v")
        assert await h.cache.get("k", "miss") == "v"


async def test_entries_live_at_most_the_local_ttl() -> None:
    async with harness(near_ttl=5) as h:
        h.remote.data[f"{PREFIX}k"] = encode("old")
        assert await h.cache.get("k") == "old"
        h.remote.data[f"{PREFIX}k"] = encode("new")  # an invalidation lost somewhere
        h.clock.advance(4)
        assert await h.cache.get("k") == "old"
        h.clock.advance(2)
        assert await h.cache.get("k") == "new"


async def test_bytes_are_bounded_least_recently_used_first() -> None:
    async with harness(near_max_bytes=1024) as h:
        for n in range(20):
            h.remote.data[f"{PREFIX}k{n}"] = encode("x" * 100)
            await h.cache.get(f"k{n}")
        figures = await h.figures()
    assert figures["bytes"] <= 1024
    assert figures["evictions"] > 0
    assert figures["entries"] == figures["fills"] - figures["evictions"]


class MovingTier(LinkedFakeTier):
    """A remote whose nodes serving keys a test replaces (a replica promoted)."""

    def __init__(self) -> None:
        super().__init__()
        self.serving = [NodeHealth(address="10.0.0.1:6379")]

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return self.serving


async def test_a_change_of_the_nodes_serving_keys_flushes_and_listens_to_the_new_ones() -> None:
    remote = MovingTier()
    async with harness(remote) as h:
        cache = h.cache
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert await cache.get("k") == 1
        remote.serving = [NodeHealth(address="10.0.0.2:6379")]
        # Nothing changes until a probe has read the topology.
        assert (await cache.stats())["near"]["entries"] == 1
        await cache._health.check_all()
        figures = (await cache.stats())["near"]
        assert figures["entries"] == 0
        assert list(figures["listeners"]) == ["10.0.0.2:6379"]
        assert await cache.get("k") == 1
        assert (await cache.stats())["near"]["entries"] == 1


async def test_a_loaders_store_drops_the_entry_it_replaces(h: Harness) -> None:
    async def load() -> str:
        return "loaded"

    await h.cache.delete("k")
    # The near cache now holds the miss. get_or_set stores through the router, not
    # through Cache.set; the router tells the near cache of every write all the same.
    assert await h.cache.get("k", "gone") == "gone"
    assert await h.cache.get_or_set("k", load) == "loaded"
    assert await h.cache.get("k") == "loaded"


async def test_a_near_cache_before_a_tier_without_invalidations_keeps_nothing() -> None:
    settings = Settings(near_cache=True, heartbeat_interval_ms=0)
    clock = FakeClock(park_sleeps_from=0.5)
    remote = FakeTier()  # no node links: an Upstash-like tier
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    async with Cache(settings, tiers=[remote, memory], clock=clock) as cache:
        remote.data[f"{PREFIX}k"] = encode("v")
        assert await cache.get("k") == "v"
        assert await cache.get("k") == "v"
        figures = (await cache.stats())["near"]
    assert (figures["filling"], figures["entries"], figures["hits"]) == (False, 0, 0)
    assert remote.calls["get"] == 2
