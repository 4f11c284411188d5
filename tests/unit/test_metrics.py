"""``/metrics``: every sample is a counter the cache keeps, and the endpoint is guarded.

A fake remote tier in front of the in-memory one, on a fake clock, so the
figures after a failover and a failback are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from pitchey_cache import Cache, Secret, Settings, create_app
from pitchey_cache.stats import LATENCY_BUCKETS, OperationStats
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.web.app import create_metrics_app
from tests.prometheus_text import samples, value
from tests.unit.fakes import FakeClock, FakeTier, fake_tier

TOKEN = "metr1cs-T0ken-Q4"
FAILOVER_TIMEOUT_MS = 10_000
HEALTH_INTERVAL_MS = 30_000


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_failures": 2,
        "max_retries": 0,
        "failover_timeout_ms": FAILOVER_TIMEOUT_MS,
        "health_check_interval_ms": HEALTH_INTERVAL_MS,
        "admin_token": Secret(TOKEN),
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def started(**overrides: Any) -> AsyncIterator[tuple[Cache, FakeTier, FakeClock]]:
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL_MS / 1000)
    remote = fake_tier("native-redis", address="redis.internal:6379")
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    async with Cache(settings(**overrides), tiers=[remote, memory], clock=clock) as cache:
        yield cache, remote, clock


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -- the figures ---------------------------------------------------------------------------


async def test_operations_hits_and_latency_by_tier_and_operation() -> None:
    async with started() as (cache, _remote, _clock):
        await cache.set("a", 1)
        await cache.get("a")
        await cache.get("missing")
        await cache.get_many(["a", "b"])

        body = samples(cache.metrics.render().decode())

    ops = "pitchey_cache_operations_total"
    assert value(body, ops, tier="native-redis", operation="get", outcome="success") == 2
    assert value(body, ops, tier="native-redis", operation="get", outcome="failure") == 0
    assert value(body, ops, tier="native-redis", operation="set", outcome="success") == 1
    assert value(body, ops, tier="native-redis", operation="get_many", outcome="success") == 1
    assert value(body, "pitchey_cache_hits_total") == 2  # get("a") and "a" of get_many
    assert value(body, "pitchey_cache_misses_total") == 2
    assert value(body, "pitchey_cache_sets_total") == 1

    histogram = "db_client_operation_duration_seconds"
    labels = {"db_system_name": "redis", "tier": "native-redis", "db_operation_name": "get"}
    assert value(body, f"{histogram}_count", **labels) == 2
    assert value(body, f"{histogram}_bucket", le="+Inf", **labels) == 2
    counts = [value(body, f"{histogram}_bucket", le=f"{b:g}", **labels) for b in LATENCY_BUCKETS]
    assert counts == sorted(counts), "buckets are cumulative"
    assert value(body, f"{histogram}_sum", **labels) >= 0
    # The chain's state: all healthy, native-redis active.
    assert value(body, "pitchey_cache_tier_active", tier="native-redis") == 1
    assert value(body, "pitchey_cache_tier_active", tier="in-memory") == 0
    assert (
        value(body, "pitchey_cache_tier_condition", tier="native-redis", condition="healthy") == 1
    )
    assert value(body, "pitchey_cache_status", status="healthy") == 1
    node = {"tier": "native-redis", "node": "redis.internal:6379", "role": "master"}
    assert value(body, "pitchey_cache_node_healthy", **node) == 1
    assert value(body, "pitchey_cache_node_consecutive_failures", **node) == 0


async def test_coalesced_reads_are_counted_and_the_near_cache_only_when_on() -> None:
    async with started() as (cache, remote, _clock):
        await cache.set("a", 1)
        gate = remote.gates["get"] = asyncio.Event()
        reads = [asyncio.create_task(cache.get(key)) for key in ("a", "b", "c")]
        await settle()
        gate.set()
        await asyncio.gather(*reads)
        body = samples(cache.metrics.render().decode())
    # The first read went alone; the other two joined one batch, sent as one get_many.
    assert value(body, "pitchey_cache_coalesced_direct_total") == 1
    assert value(body, "pitchey_cache_coalesced_joined_total") == 2
    assert value(body, "pitchey_cache_coalesced_batches_total") == 1
    assert value(body, "pitchey_cache_coalesced_batched_keys_total") == 2
    assert not any(name.startswith("pitchey_cache_near_") for name, _ in body)


async def test_a_failover_and_a_failback_show_in_every_figure() -> None:
    async with started() as (cache, remote, clock):
        remote.down = True
        await cache.set("k", "written while down")
        await cache.get("k")
        down = samples(cache.metrics.render().decode())

        remote.down = False
        clock.advance(FAILOVER_TIMEOUT_MS / 1000)
        await cache.get("probe-trigger")
        await settle()
        await cache.get("k")
        back = samples(cache.metrics.render().decode())

    ops = "pitchey_cache_operations_total"
    node = {"tier": "native-redis", "node": "redis.internal:6379", "role": "master"}
    assert value(down, ops, tier="native-redis", operation="set", outcome="failure") == 1
    assert value(down, ops, tier="native-redis", operation="get", outcome="failure") == 1
    assert value(down, ops, tier="in-memory", operation="set", outcome="success") == 1
    assert value(down, ops, tier="in-memory", operation="get", outcome="success") == 1
    assert value(down, "pitchey_cache_node_healthy", **node) == 0
    assert value(down, "pitchey_cache_node_consecutive_failures", **node) == 2
    assert value(down, "pitchey_cache_tier_condition", tier="native-redis", condition="down") == 1
    assert value(down, "pitchey_cache_tier_active", tier="in-memory") == 1
    assert value(down, "pitchey_cache_status", status="degraded") == 1
    assert value(down, "pitchey_cache_failovers_total") == 1
    assert value(down, "pitchey_cache_events_total", kind="failover") == 1
    assert value(down, "pitchey_cache_journal_pending_keys", tier="native-redis") == 1
    assert value(down, "pitchey_cache_memory_entries") == 1

    assert value(back, "pitchey_cache_node_healthy", **node) == 1
    assert value(back, "pitchey_cache_tier_active", tier="native-redis") == 1
    assert value(back, "pitchey_cache_failbacks_total") == 1
    assert value(back, "pitchey_cache_events_total", kind="failback") == 1
    assert value(back, "pitchey_cache_journal_pending_keys", tier="native-redis") == 0
    assert value(back, "pitchey_cache_status", status="healthy") == 1


async def test_with_metrics_off_no_histograms_are_kept() -> None:
    async with started(metrics_enabled=False) as (cache, _remote, _clock):
        await cache.get("a")
        body = samples(cache.metrics.render().decode())

    assert not [name for name, _ in body if name.startswith("db_client_operation_duration")]
    ops = "pitchey_cache_operations_total"
    assert value(body, ops, tier="native-redis", operation="get", outcome="success") == 1
    assert value(body, "pitchey_cache_misses_total") == 1


# -- the endpoint ---------------------------------------------------------------------------


def memory_only(**overrides: Any) -> Cache:
    return Cache(Settings(cache_enabled=False, **{"admin_token": Secret(TOKEN), **overrides}))


def get(cache: Cache, path: str = "/metrics", **headers: str) -> Any:
    with TestClient(create_app(cache)) as client:
        return client.get(path, headers=headers)


def test_metrics_need_the_admin_token_by_default() -> None:
    cache = memory_only()

    refused = get(cache)
    wrong = get(cache, Authorization="Bearer wrong")
    served = get(cache, Authorization=f"Bearer {TOKEN}")

    assert refused.status_code == 401
    assert wrong.status_code == 401
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "pitchey_cache_status" in served.text
    assert TOKEN not in served.text


def test_without_a_configured_token_metrics_are_off_with_a_hint() -> None:
    response = get(memory_only(admin_token=None))

    assert response.status_code == 403
    assert "CACHE_ADMIN_TOKEN" in response.text


def test_metrics_auth_off_serves_without_a_token() -> None:
    response = get(memory_only(admin_token=None, metrics_auth=False))

    assert response.status_code == 200
    assert "pitchey_cache_memory_entries" in response.text


def test_metrics_disabled_means_no_route() -> None:
    assert (
        get(memory_only(metrics_enabled=False), Authorization=f"Bearer {TOKEN}").status_code == 404
    )


def test_a_metrics_port_moves_the_route_to_its_own_app() -> None:
    cache = memory_only(metrics_port=9464)

    assert get(cache, Authorization=f"Bearer {TOKEN}").status_code == 404
    with TestClient(create_app(cache)), TestClient(create_metrics_app(cache)) as metrics:
        assert metrics.get("/metrics").status_code == 401
        served = metrics.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert served.status_code == 200
    assert "pitchey_cache_tier_active" in served.text


@pytest.mark.parametrize("name", ["pitchey_cache_operations", "pitchey_cache_hits"])
def test_counter_names_follow_prometheus_rules(name: str) -> None:
    cache = memory_only()
    with TestClient(create_app(cache)) as client:
        client.get("/api/health/cache")
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert f"# TYPE {name}_total counter" in text


def test_histogram_buckets_hold_calls_up_to_their_bound() -> None:
    figures = OperationStats.with_histogram()
    for seconds in (0.00005, 0.0001, 0.0002, 0.00025, 3.0, 20.0):
        figures.record(True, seconds)

    assert figures.buckets is not None
    assert figures.buckets[0] == 2  # <= 0.1 ms, the bound itself included
    assert figures.buckets[1] == 2  # <= 0.25 ms
    assert figures.buckets[LATENCY_BUCKETS.index(5.0)] == 1
    assert figures.buckets[-1] == 1  # beyond 10 s: +Inf only
    assert sum(figures.buckets) == figures.total == 6
