"""Failover, failback and the invalidation journal, with a fake remote tier and a fake clock.

The chain is what a development deployment builds: a remote tier the router
sees as ``native-redis`` (a FakeTier) in front of the in-memory tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pitchey_cache import Cache, CommandError, Settings
from pitchey_cache.events import EventLog
from pitchey_cache.resilience.journal import InvalidationJournal
from pitchey_cache.resilience.router import FailoverRouter, HealthPolicy, RetryPolicy
from pitchey_cache.serialization import encode
from pitchey_cache.tiers import MemoryTier
from tests.unit.fakes import FakeClock, FakeTier, fake_tier

FAILOVER_TIMEOUT = 10.0
HEALTH_INTERVAL = 30.0


@dataclass
class Harness:
    cache: Cache
    remote: FakeTier
    memory: MemoryTier
    clock: FakeClock

    def kinds(self, *wanted: str) -> list[str]:
        """The kinds of the events logged so far, limited to ``wanted``."""
        return [e.kind for e in self.cache.events.recent() if e.kind in wanted]

    async def fail_over(self) -> None:
        """Take the remote tier down and make calls until the router bypasses it."""
        self.remote.down = True
        for _ in range(self.cache.settings.max_failures):
            await self.cache.get("trip")
        assert self.cache.active_tier == "in-memory"

    async def fail_back(self) -> None:
        """Bring the remote tier back and let the due probe return traffic to it."""
        self.remote.down = False
        self.clock.advance(FAILOVER_TIMEOUT)
        await self.cache.get("probe-trigger")  # served by memory; starts the due probe
        await settle()
        assert self.cache.active_tier == "native-redis"


async def settle(turns: int = 20) -> None:
    """Let background tasks (probes, journal drains) run as far as they can."""
    for _ in range(turns):
        await asyncio.sleep(0)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_failures": 3,
        "failover_timeout_ms": int(FAILOVER_TIMEOUT * 1000),
        "health_check_interval_ms": int(HEALTH_INTERVAL * 1000),
        "max_retries": 0,
        "retry_delay_ms": 500,
        "journal_max_keys": 100,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def harness(**overrides: Any) -> AsyncIterator[Harness]:
    settings = make_settings(**overrides)
    # The health checker's sleeps park until a test advances the clock past them.
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL)
    remote = fake_tier("native-redis", distributed=True)
    memory = MemoryTier(max_entries=1000, max_bytes=1024 * 1024, clock=clock)
    async with Cache(settings, tiers=[remote, memory], clock=clock) as cache:
        yield Harness(cache, remote, memory, clock)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with harness() as started:
        yield started


# -- serving from the next tier ------------------------------------------------------------


def api_calls(cache: Cache) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def loader() -> str:
        return "loaded"

    return {
        "get": lambda: cache.get("k"),
        "set": lambda: cache.set("k", 1),
        "set_only_if_absent": lambda: cache.set("k", 1, only_if_absent=True),
        "delete": lambda: cache.delete("k", "j"),
        "exists": lambda: cache.exists("k"),
        "expire": lambda: cache.expire("k", 10),
        "ttl": lambda: cache.ttl("k"),
        "incr": lambda: cache.incr("n"),
        "get_many": lambda: cache.get_many(["k", "j"]),
        "set_many": lambda: cache.set_many({"k": 1, "j": 2}),
        "delete_pattern": lambda: cache.delete_pattern("k*"),
        "get_or_set": lambda: cache.get_or_set("k", loader),
        "get_or_set_locked": lambda: cache.get_or_set(
            "k", loader, lock=True, early_refresh=True, stale_if_error=5, tags=["t"]
        ),
        "set_tagged": lambda: cache.set("k", 1, tags=["t"]),
        "invalidate_tags": lambda: cache.invalidate_tags("t"),
    }


API_CALLS = [
    "get",
    "set",
    "set_only_if_absent",
    "delete",
    "exists",
    "expire",
    "ttl",
    "incr",
    "get_many",
    "set_many",
    "delete_pattern",
    "get_or_set",
    "get_or_set_locked",
    "set_tagged",
    "invalidate_tags",
]


def test_api_calls_lists_every_call() -> None:
    assert sorted(api_calls(Cache(Settings(cache_enabled=False)))) == sorted(API_CALLS)


@pytest.mark.parametrize("call", API_CALLS)
@pytest.mark.parametrize("how", ["unavailable", "driver error", "bypassed"])
async def test_every_call_is_served_by_memory_while_the_remote_fails(
    h: Harness, call: str, how: str
) -> None:
    h.remote.down = True
    if how == "driver error":
        # A driver exception the tier does not map itself is translated by Tier.translate.
        h.remote.raise_instead = ConnectionResetError("connection reset by peer")
    if how == "bypassed":
        await h.fail_over()
    await api_calls(h.cache)[call]()  # no exception reaches the caller


async def test_a_failing_tier_is_served_by_the_next_in_the_same_call(h: Harness) -> None:
    await h.cache.set("k", "v1")
    assert await h.remote.get("pitchey:k") == encode("v1")
    h.remote.down = True

    assert await h.cache.set("k", "v2") is True
    assert h.remote.calls["set"] == 2
    assert await h.memory.get("pitchey:k") == encode("v2")
    assert await h.cache.get("k") == "v2"
    assert h.cache.active_tier == "native-redis"  # two failures are not an outage yet


async def test_command_error_reaches_the_caller_and_is_not_failed_over(h: Harness) -> None:
    await h.cache.set("title", "text")
    with pytest.raises(CommandError):
        await h.cache.incr("title")
    assert h.remote.node.failure_count == 0
    assert h.memory.entry_count == 0
    assert h.kinds("failover") == []


# -- bypassing a failed tier, probing it, failing back --------------------------------------


async def test_after_max_failures_the_tier_is_not_called_at_all(h: Harness) -> None:
    h.remote.down = True
    for _ in range(3):
        await h.cache.get("k")
    assert h.remote.calls["get"] == 3
    assert h.kinds("failover", "failback") == ["failover"]
    assert h.cache.active_tier == "in-memory"

    for _ in range(10):
        await h.cache.set("k", "v")
        assert await h.cache.get("k") == "v"
    assert h.remote.calls["get"] == 3
    assert h.remote.calls["set"] == 0
    assert h.kinds("failover") == ["failover"]


async def test_calls_served_elsewhere_are_counted_on_the_node_whose_keys_they_are(
    h: Harness,
) -> None:
    """Failed there, then skipped there: each call another tier served is counted once."""
    h.remote.down = True
    for _ in range(3):
        await h.cache.get("k")  # fails on the remote, served by memory
    for _ in range(4):
        await h.cache.set("k", "v")  # the node is down: skipped
    (node,) = (await h.cache.health())["cluster"]["nodes"]
    assert node["servedElsewhere"] == 7
    await h.cache.get("k")
    assert (await h.cache.health())["cluster"]["nodes"][0]["servedElsewhere"] == 8


async def test_a_success_starts_the_failure_count_over(h: Harness) -> None:
    for _ in range(3):
        h.remote.down = True
        await h.cache.get("k")
        await h.cache.get("k")
        h.remote.down = False
        await h.cache.get("k")
    assert h.remote.calls["get"] == 9
    assert h.cache.active_tier == "native-redis"
    assert h.kinds("failover") == []


async def test_probe_after_failover_timeout_then_failback(h: Harness) -> None:
    await h.fail_over()
    pings = h.remote.calls["ping"]
    h.remote.down = False

    h.clock.advance(FAILOVER_TIMEOUT - 0.25)
    await h.cache.get("k")
    await settle()
    assert h.remote.calls["ping"] == pings  # not due yet
    assert h.cache.active_tier == "in-memory"

    h.clock.advance(0.25)
    await h.cache.get("k")  # still served by memory; the probe runs in the background
    await settle()
    assert h.remote.calls["ping"] == pings + 1
    assert h.cache.active_tier == "native-redis"
    assert h.kinds("failover", "failback") == ["failover", "failback"]

    gets = h.remote.calls["get"]
    await h.cache.get("k")
    assert h.remote.calls["get"] == gets + 1


async def test_a_failed_probe_waits_another_failover_timeout(h: Harness) -> None:
    await h.fail_over()
    pings = h.remote.calls["ping"]

    h.clock.advance(FAILOVER_TIMEOUT)
    await h.cache.get("k")
    await settle()
    assert h.remote.calls["ping"] == pings + 1
    assert h.cache.active_tier == "in-memory"

    h.clock.advance(FAILOVER_TIMEOUT / 2)
    await h.cache.get("k")
    await settle()
    assert h.remote.calls["ping"] == pings + 1

    h.remote.down = False
    h.clock.advance(FAILOVER_TIMEOUT / 2)
    await h.cache.get("k")
    await settle()
    assert h.remote.calls["ping"] == pings + 2
    assert h.cache.active_tier == "native-redis"


async def test_the_health_checker_probes_every_interval(h: Harness) -> None:
    assert (await h.cache.stats())["healthChecks"] == 1  # the round made by start()
    h.remote.down = True

    h.clock.advance(HEALTH_INTERVAL - 1)
    await settle()
    assert (await h.cache.stats())["healthChecks"] == 1

    h.clock.advance(1)
    await settle()
    assert (await h.cache.stats())["healthChecks"] == 2
    # The failed probe bypasses the tier before any call paid for it.
    assert h.cache.active_tier == "in-memory"
    assert h.kinds("failover") == ["failover"]

    h.remote.down = False
    h.clock.advance(HEALTH_INTERVAL)
    await settle()
    assert (await h.cache.stats())["healthChecks"] == 3
    assert h.cache.active_tier == "native-redis"
    assert h.kinds("failover", "failback") == ["failover", "failback"]


# -- retries --------------------------------------------------------------------------------


async def test_retryable_failures_are_retried_with_the_delay_on_the_clock() -> None:
    async with harness(max_retries=2, retry_delay_ms=500, max_failures=10) as h:
        h.remote.down = True
        h.remote.retryable = True
        assert await h.cache.get("k") is None
        assert h.remote.calls["get"] == 3
        assert h.clock.slept == [0.5, 0.5]


async def test_non_retryable_failures_are_not_retried() -> None:
    async with harness(max_retries=2, max_failures=10) as h:
        h.remote.down = True
        h.remote.retryable = False
        await h.cache.get("k")
        assert h.remote.calls["get"] == 1
        assert h.clock.slept == []


async def test_incr_is_never_retried() -> None:
    async with harness(max_retries=3, max_failures=10) as h:
        h.remote.down = True
        h.remote.retryable = True
        assert await h.cache.incr("views") == 1  # counted once, by memory
        assert h.remote.calls["incr"] == 1
        assert h.clock.slept == []


async def test_set_only_if_absent_is_never_retried() -> None:
    async with harness(max_retries=3, max_failures=10) as h:
        h.remote.down = True
        h.remote.retryable = True
        assert await h.cache.set("ip", 1, only_if_absent=True) is True
        assert h.remote.calls["set"] == 1


async def test_retries_stop_once_the_tier_is_bypassed() -> None:
    async with harness(max_retries=5, max_failures=2) as h:
        h.remote.down = True
        h.remote.retryable = True
        await h.cache.get("k")
        assert h.remote.calls["get"] == 2
        assert h.clock.slept == [0.5]


# -- the invalidation journal: no stale read after failback -----------------------------------


async def test_a_failed_write_that_lands_late_is_never_read_back(h: Harness) -> None:
    """A write abandoned with its outcome unknown may still land until the driver gives
    it up (glide retries through CLUSTERDOWN): until then its key keeps off that tier."""
    h.remote.deadline = 3.0
    await h.cache.set("k", "v1")
    h.remote.failing = {"set"}
    await h.cache.set("k", "v2")  # sent, failed: served by memory, fenced on the remote
    h.remote.failing = set()
    h.clock.advance(1.0)
    await h.cache.set("k", "v3")  # within the fence: not written to the remote
    assert h.remote.calls["set"] == 2
    assert await h.cache.get("k") == "v3"
    assert h.remote.calls["get"] == 0
    h.remote.data["pitchey:k"] = encode("v2")  # the abandoned write lands, late
    h.clock.advance(2.1)
    assert await h.cache.get("k") is None  # the remote invalidated it first: a miss
    assert "pitchey:k" not in h.remote.data
    assert h.remote.calls["get"] == 1
    (node,) = (await h.cache.health())["cluster"]["nodes"]
    assert node["servedElsewhere"] == 3


async def test_no_stale_read_after_failback(h: Harness) -> None:
    await h.cache.set("k", "v1")
    await h.fail_over()
    await h.cache.set("k", "v2")  # served by memory
    assert await h.cache.get("k") == "v2"

    await h.fail_back()
    assert await h.cache.get("k") in (None, "v2")
    assert await h.remote.get("pitchey:k") != encode("v1")


async def test_a_write_that_failed_on_the_remote_is_invalidated_there(h: Harness) -> None:
    # One failure, no outage: the write's outcome on the remote is unknown.
    await h.cache.set("k", "v1")
    h.remote.down = True
    await h.cache.set("k", "v2")
    h.remote.down = False
    assert await h.cache.get("k") in (None, "v2")


async def test_delete_during_an_outage_is_not_undone_by_failback(h: Harness) -> None:
    await h.cache.set_many({"a": 1, "b": 2})
    await h.fail_over()
    assert await h.cache.delete("a") == 0  # memory never held it
    await h.fail_back()
    assert await h.cache.get("a") is None
    assert await h.cache.get("b") == 2


async def test_pattern_delete_during_an_outage_is_not_undone_by_failback(h: Harness) -> None:
    await h.cache.set_many({"pitches:browse:1": 1, "pitches:browse:2": 2, "users:1": 3})
    await h.fail_over()
    await h.cache.delete_pattern("pitches:browse:*")
    await h.fail_back()
    assert await h.cache.get_many(["pitches:browse:1", "pitches:browse:2"]) == {}
    assert await h.cache.get("users:1") == 3


async def test_a_pending_pattern_delete_blocks_the_keys_it_matches_byte_by_byte(
    h: Harness,
) -> None:
    """Redis's ``??`` matches ``é`` (two bytes in UTF-8): until the pattern delete made
    during the outage has run on the remote tier, ``é`` must not be read there."""
    await h.cache.set_many({"é": "old", "abc": "kept"})
    await h.fail_over()
    assert await h.cache.delete_pattern("??") == 0  # memory held neither key

    scan = asyncio.Event()
    h.remote.gates["delete_matching"] = scan
    await h.fail_back()
    remote_gets = h.remote.calls["get"]
    assert await h.cache.get("é") is None  # blocked: served by memory meanwhile
    assert h.remote.calls["get"] == remote_gets
    assert await h.cache.get("abc") == "kept"  # three bytes: not blocked
    assert h.remote.calls["get"] == remote_gets + 1

    scan.set()
    await settle()
    assert h.remote.deleted_patterns == ["pitchey:??"]
    assert "pitchey:é" not in h.remote.data
    assert await h.cache.get("é") is None
    assert h.remote.calls["get"] == remote_gets + 2


async def test_incr_during_an_outage_is_not_lost_to_the_old_count(h: Harness) -> None:
    await h.cache.set("views", 100)
    await h.fail_over()
    assert await h.cache.incr("views") == 1  # memory counts from zero
    await h.fail_back()
    # The remote must not keep counting from the value it had before the outage.
    assert await h.cache.get("views") != 100
    assert await h.cache.incr("views") != 101


async def test_journal_overflow_invalidates_the_whole_prefix() -> None:
    async with harness(journal_max_keys=2, max_failures=1) as h:
        await h.cache.set_many({"before:1": 1, "before:2": 2})
        h.remote.data["other-app:k"] = b"1"
        await h.fail_over()
        await h.cache.set_many({"a": 1, "b": 2, "c": 3})

        await h.fail_back()
        await h.cache.get("a")
        await settle()
        assert h.remote.deleted_patterns == ["pitchey:*"]
        assert await h.cache.get_many(["before:1", "before:2"]) == {}
        assert h.remote.data == {"other-app:k": b"1"}
        assert (await h.cache.stats())["journal"]["pending"] == 0


async def test_a_failed_invalidation_keeps_the_journal_and_serves_no_stale_value(
    h: Harness,
) -> None:
    await h.cache.set("k", "v1")
    await h.fail_over()
    await h.cache.set("k", "v2")

    h.remote.failing = {"delete", "delete_matching"}
    await h.fail_back()
    for _ in range(3):
        assert await h.cache.get("k") in (None, "v2")
    stats = await h.cache.stats()
    assert stats["journal"]["pending"] >= 1
    assert stats["tiers"][0]["journalPending"] is True
    assert "replay-failed" in h.kinds("replay-failed")

    # Once invalidation works again, the remote serves, without the old value.
    h.remote.failing = set()
    h.clock.advance(FAILOVER_TIMEOUT)
    await h.cache.get("other")
    await settle()
    assert await h.cache.get("k") in (None, "v2")
    assert "pitchey:k" not in h.remote.data
    assert (await h.cache.stats())["journal"]["pending"] == 0


async def test_a_remote_write_invalidates_memory_at_once(h: Harness) -> None:
    await h.fail_over()
    await h.cache.set("k", "old")  # only memory holds it
    await h.fail_back()

    await h.cache.set("k", "new")  # served by the remote
    assert await h.memory.get("pitchey:k") is None
    await h.cache.set_many({"j": 1})
    await h.cache.delete("gone")
    await h.cache.delete_pattern("k*")
    assert h.memory.entry_count == 0

    # A later outage must not bring back what memory held from the first one.
    h.remote.down = True
    assert await h.cache.get("k") is None


async def test_memory_never_serves_an_outage_value_older_than_the_remotes(h: Harness) -> None:
    """Another process's write reaches the remote tier only; memory must not outlive it.

    During a first outage this process writes ``k=old`` to memory. After failback
    another process (which shares the remote tier, not this memory) writes
    ``k=new``, and this process reads ``new`` from the remote. When the remote
    fails again, memory must not answer with ``old``: it is older than what the
    remote tier held.
    """
    await h.fail_over()
    await h.cache.set("k", "old")
    await h.fail_back()

    h.remote.data["pitchey:k"] = encode("new")  # written by another process
    assert await h.cache.get("k") == "new"

    await h.fail_over()
    assert await h.cache.get("k") != "old"


async def test_calls_do_not_wait_for_a_long_journal_drain() -> None:
    """After failback an overflowed journal deletes the whole prefix on the remote tier,
    one SCAN pass over its whole keyspace, which can take many seconds. Calls must keep
    their documented bounded time meanwhile (served by the next tier, or at worst after
    one REDIS_COMMAND_TIMEOUT, 1 ms here), not queue behind that scan."""
    async with harness(
        journal_max_keys=2, max_failures=1, command_timeout_ms=1, connect_timeout_ms=1
    ) as h:
        await h.fail_over()
        await h.cache.set_many({"a": 1, "b": 2, "c": 3})
        scan = asyncio.Event()  # the prefix delete runs until this is set
        h.remote.gates["delete_matching"] = scan

        await h.fail_back()
        await settle()
        assert h.remote.calls["delete_matching"] == 1  # the drain is under way

        call = asyncio.ensure_future(h.cache.get("a"))
        try:
            done, _ = await asyncio.wait({call}, timeout=0.2)  # real seconds
            assert call in done, "the call is still waiting for the prefix delete to finish"
            assert call.result() in (None, 1)  # memory's value, or a miss; never stale
        finally:
            scan.set()
            await call


# -- health status -------------------------------------------------------------------------------


async def test_status_follows_the_serving_tier() -> None:
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL)
    remote = fake_tier("native-redis")
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    cache = Cache(make_settings(), tiers=[remote, memory], clock=clock)
    assert cache.status() == "unhealthy"
    assert (await cache.health())["status"] == "unhealthy"

    async with cache:
        health = await cache.health()
        assert health["status"] == "healthy"
        assert (health["type"], health["distributed"]) == ("native-redis", True)
        assert health["cluster"]["healthyNodes"] == 1
        # The node as the guide shows it, every figure from the fake tier and clock.
        assert health["cluster"]["nodes"] == [
            {
                "address": "fake-redis.internal:6379",
                "healthy": True,
                "failureCount": 0,
                "lastHealthCheck": "2024-10-24T12:00:00.000Z",
                "poolConnections": 2,
                "servedElsewhere": 0,
            }
        ]
        assert health["cluster"]["connectionPool"] == {
            "totalConnections": 2,
            "activeConnections": 0,
            "idleConnections": 2,
        }
        clock.advance(5)
        assert (await cache.health())["cluster"]["performance"]["uptime"] == 5000

        remote.down = True
        for _ in range(3):
            await cache.get("k")
        health = await cache.health()
        assert health["status"] == "degraded"
        assert (health["type"], health["distributed"]) == ("in-memory", False)
        assert health["cluster"]["failedNodes"] == 1
        assert health["cluster"]["nodes"][0]["healthy"] is False
        assert health["cluster"]["operations"]["failed"] == 3

    assert cache.status() == "unhealthy"


async def test_a_remote_down_at_start_is_bypassed_from_the_first_call() -> None:
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL)
    remote = fake_tier("native-redis")
    remote.down = True
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    async with Cache(make_settings(), tiers=[remote, memory], clock=clock) as cache:
        assert cache.status() == "degraded"
        assert cache.active_tier == "in-memory"
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert remote.calls["set"] == remote.calls["get"] == 0


# -- the health checker, driven by hand -----------------------------------------------------------


def direct_router(
    clock: FakeClock, remote: FakeTier, *, probe_timeout: float = 1.0
) -> FailoverRouter:
    return FailoverRouter(
        [remote, MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)],
        health=HealthPolicy(
            max_failures=3,
            failover_timeout=FAILOVER_TIMEOUT,
            probe_timeout=probe_timeout,
            health_interval=HEALTH_INTERVAL,
        ),
        retry=RetryPolicy(max_retries=0, delay=0.5),
        journal=InvalidationJournal(100),
        namespace_pattern="pitchey:*",
        clock=clock,
        events=EventLog(),
    )


async def test_check_all_trips_a_failing_tier_and_restores_a_recovered_one() -> None:
    clock = FakeClock()
    remote = fake_tier("native-redis")
    router = direct_router(clock, remote)
    checker = router.health

    await checker.check_all()
    assert router.active.tier is remote
    assert remote.node.last_health_check == clock.now()

    remote.down = True
    await checker.check_all()
    assert router.active.tier.name == "in-memory"
    assert remote.node.healthy is False
    assert remote.node.last_error is not None

    clock.advance(1)
    remote.down = False
    await checker.check_all()
    assert router.active.tier is remote
    assert remote.node.healthy is True
    assert remote.node.last_health_check == clock.now()
    assert [e.kind for e in router.events.recent() if e.kind in {"failover", "failback"}] == [
        "failover",
        "failback",
    ]
    assert checker.rounds == 3
    assert remote.calls["ping"] == 3


async def test_a_frozen_tier_fails_its_probe_after_the_probe_timeout() -> None:
    clock = FakeClock()
    remote = fake_tier("native-redis")
    router = direct_router(clock, remote, probe_timeout=0.005)  # real seconds
    checker = router.health
    remote.hang = True
    try:
        await checker.check_all()
    finally:
        remote.release()
    assert remote.node.healthy is False
    assert "timed out" in (remote.node.last_error or "")
    assert router.active.tier.name == "in-memory"


# -- events to subscribers ---------------------------------------------------------------


async def test_subscribers_get_every_event_and_a_failing_one_breaks_nothing(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def broken(_event: object) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = h.cache.on_event(lambda event: seen.append(f"{event.kind} {event.tier}"))
    h.cache.on_event(broken)
    await h.fail_over()
    await h.fail_back()
    assert "node-down native-redis" in seen
    assert "failover native-redis" in seen
    assert seen[-1].startswith(("failback", "node-up", "replay"))
    assert "subscriber bug" in caplog.text
    unsubscribe()
    before = len(seen)
    await h.fail_over()
    assert len(seen) == before


async def test_json_log_format_writes_one_json_object_per_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="pitchey_cache")
    async with harness(log_format="json") as started:
        await started.fail_over()
    lines = [r.getMessage() for r in caplog.records if r.name == "pitchey_cache"]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"event", "at", "kind", "tier", "message"} <= set(events[0])
    assert "failover" in [e["kind"] for e in events]
