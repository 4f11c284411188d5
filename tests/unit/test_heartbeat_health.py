"""What the health checker does with heartbeats: a lost node's calls give up at once,
a recovered node is confirmed by a probe after RECOVERY_ANSWERS answers, and the
caller's own cancellation is never swallowed. A fake tier and a fake clock; the real
heartbeats against real servers are in the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pitchey_cache import Cache, Settings
from pitchey_cache.resilience.health import RECOVERY_ANSWERS
from pitchey_cache.resilience.state import TierState
from pitchey_cache.tiers import MemoryTier
from tests.unit.fakes import FakeClock, FakeTier, fake_tier
from tests.unit.test_router import Harness, harness, settle

pytestmark = pytest.mark.unit


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as started:
        yield started


def remote_state(h: Harness) -> TierState:
    return h.cache._router.states[0]


async def test_a_lost_node_releases_the_calls_waiting_on_it(h: Harness) -> None:
    await h.cache.set("k", "v")  # stored remotely
    h.remote.hang = True
    calls = [asyncio.create_task(h.cache.get("k", default="miss")) for _ in range(5)]
    await settle()
    assert all(not c.done() for c in calls)

    h.cache._router.health.heartbeat_lost(remote_state(h), h.remote.node.address, "refused")
    results = await asyncio.gather(*calls)

    assert results == ["miss"] * 5  # served by memory, which never saw "k"
    assert h.cache.active_tier == "in-memory"
    assert h.remote.node.healthy is False
    assert h.remote.node.last_error == "refused"
    assert h.kinds("node-down", "failover") == ["node-down", "failover"]
    # Five reads, two calls: the first went alone, the other four were coalesced.
    assert "2 calls in flight re-routed" in h.cache.events.recent()[-2].message
    h.remote.release()


async def test_a_write_released_from_a_lost_node_is_journaled(h: Harness) -> None:
    h.remote.hang = True
    write = asyncio.create_task(h.cache.set("k", "new"))
    await settle()
    h.cache._router.health.heartbeat_lost(remote_state(h), h.remote.node.address, "refused")
    await write
    # Served by memory; the remote may or may not have it: journaled for failback.
    assert await h.cache.get("k") == "new"
    assert h.cache._router.journal.pending("native-redis")
    h.remote.release()


async def test_the_callers_own_cancellation_is_not_swallowed(h: Harness) -> None:
    h.remote.hang = True
    call = asyncio.create_task(h.cache.get("k"))
    await settle()
    call.cancel()
    # Lost at the same moment: the caller's cancellation still wins.
    h.cache._router.health.heartbeat_lost(remote_state(h), h.remote.node.address, "refused")
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not remote_state(h).aborted
    assert not remote_state(h).in_flight
    h.remote.release()


async def test_failback_needs_answers_in_a_row_then_a_probe(h: Harness) -> None:
    health = h.cache._router.health
    state = remote_state(h)
    address = h.remote.node.address
    health.heartbeat_lost(state, address, "refused")
    assert h.cache.active_tier == "in-memory"
    pings = h.remote.calls["ping"]

    for _ in range(RECOVERY_ANSWERS - 1):
        health.heartbeat_answered(state, address)
    health.heartbeat_lost(state, address, "refused")  # it flapped: start over
    for _ in range(RECOVERY_ANSWERS - 1):
        health.heartbeat_answered(state, address)
    await settle()
    assert h.cache.active_tier == "in-memory"
    assert h.remote.calls["ping"] == pings

    health.heartbeat_answered(state, address)
    await settle()
    assert h.remote.calls["ping"] == pings + 1  # the confirming probe
    assert h.cache.active_tier == "native-redis"
    assert h.kinds("failover", "failback") == ["failover", "failback"]


async def test_a_probe_does_not_ask_a_node_whose_heartbeat_fails(h: Harness) -> None:
    health = h.cache._router.health
    state = remote_state(h)
    health.heartbeat_lost(state, h.remote.node.address, "no answer to PING within 0.75s")
    h.remote.hang = True  # a frozen node: asking it through the driver would hang
    await asyncio.wait_for(health.probe(state), timeout=1)
    assert h.remote.node.last_error == "no answer to PING within 0.75s"
    assert h.remote.node.healthy is False
    h.remote.release()


# -- CACHE_FALLBACK_TTL ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def memory_behind(remote: FakeTier, cap: int) -> AsyncIterator[tuple[Cache, FakeClock]]:
    clock = FakeClock(park_sleeps_from=30)
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock, ttl_cap=cap)
    settings = Settings(max_failures=1, max_retries=0, heartbeat_interval_ms=0)
    async with Cache(settings, tiers=[remote, memory], clock=clock) as cache:
        yield cache, clock


async def test_the_memory_tier_standing_in_caps_every_ttl() -> None:
    remote = fake_tier("native-redis")
    remote.down = True
    async with memory_behind(remote, cap=60) as (cache, clock):
        await cache.set("long", 1, ttl=3600)
        await cache.set_many({"many": 1}, ttl=3600)
        await cache.incr("counter")  # no expiry in Redis; capped in the stand-in
        assert await cache.ttl("long") == 60
        assert await cache.ttl("many") == 60
        assert await cache.ttl("counter") == 60
        await cache.set("short", 1, ttl=5)
        assert await cache.ttl("short") == 5
        clock.advance(61)
        assert await cache.get_many(["long", "many", "counter", "short"]) == {}


def test_the_cap_applies_only_when_memory_stands_in() -> None:
    alone = Cache(Settings(cache_enabled=False, fallback_ttl=5))
    behind = Cache(Settings(fallback_ttl=5))
    assert alone._memory._ttl_cap is None
    assert behind._memory._ttl_cap == 5


async def test_a_retry_is_dropped_when_the_node_was_lost_during_the_retry_delay() -> None:
    async with harness(max_retries=2) as h:
        health = h.cache._router.health
        state = remote_state(h)
        h.remote.down = True
        h.remote.retryable = True  # "disconnected": the command certainly did not run
        sleep = h.clock.sleep

        async def sleep_and_lose(seconds: float) -> None:
            health.heartbeat_lost(state, h.remote.node.address, "connection refused")
            await sleep(seconds)

        h.clock.sleep = sleep_and_lose  # type: ignore[method-assign]
        assert await h.cache.get("k", default="miss") == "miss"
        # One attempt, one retry delay, then straight to memory: no second attempt on
        # a node known to be dead (it would wait for the command timeout).
        assert h.remote.calls["get"] == 1
