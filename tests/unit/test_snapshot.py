"""``Cache.snapshot()``: one typed copy of the cache's state, which the health, stats
and cluster bodies and ``/metrics`` are all rendered from."""

from __future__ import annotations

from pitchey_cache import Cache, Settings
from pitchey_cache.snapshot import health_body, stats_body
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.tiers.base import TierCondition
from tests.prometheus_text import samples, value
from tests.unit.fakes import FakeClock, fake_tier


def cache_over_fake_redis(clock: FakeClock) -> tuple[Cache, MemoryTier]:
    remote = fake_tier("native-redis", address="redis.internal:6379")
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    settings = Settings(max_failures=2, max_retries=0, health_check_interval_ms=30_000)
    return Cache(settings, tiers=[remote, memory], clock=clock), memory


async def test_the_snapshot_holds_the_figures_every_body_shows() -> None:
    clock = FakeClock(park_sleeps_from=30)
    cache, _memory = cache_over_fake_redis(clock)
    async with cache:
        await cache.set("a", 1)
        await cache.get("a")
        await cache.get("missing")
        clock.advance(2)

        snapshot = cache.snapshot()
        health, stats = await cache.health(), await cache.stats()
        metrics = samples(cache.metrics.render().decode())

    preferred = snapshot.preferred
    assert (snapshot.status, snapshot.active.name, snapshot.uptime_ms) == (
        "healthy",
        "native-redis",
        2000,
    )
    assert [t.name for t in snapshot.tiers] == ["native-redis", "in-memory"]
    assert preferred.condition is TierCondition.HEALTHY
    assert (preferred.operations.successful, preferred.operations.failed) == (3, 0)
    assert (snapshot.counters.hits, snapshot.counters.misses) == (1, 1)
    assert [n.address for n in preferred.nodes] == ["redis.internal:6379"]

    assert health == health_body(snapshot)
    assert stats == stats_body(snapshot)
    assert health["cluster"]["operations"]["total"] == preferred.operations.total
    ops = "pitchey_cache_operations_total"
    assert value(metrics, ops, tier="native-redis", operation="get", outcome="success") == 2
    assert value(metrics, "pitchey_cache_hits_total") == snapshot.counters.hits


async def test_a_snapshot_is_a_copy_that_later_calls_leave_alone() -> None:
    clock = FakeClock(park_sleeps_from=30)
    cache, _memory = cache_over_fake_redis(clock)
    async with cache:
        await cache.set("a", 1)
        before = cache.snapshot()
        await cache.set("b", 2)
        await cache.get("a")

        after = cache.snapshot()

    assert before.preferred.operations.total == 1
    assert before.counters.sets == 1
    assert after.preferred.operations.total == 3
    assert after.counters.sets == 2
