"""Prometheus metrics, read at scrape time from the counters the cache already keeps.

Nothing here counts anything itself: :class:`CacheMetrics` is a collector
over the cache's :class:`~pitchey_cache.snapshot.CacheSnapshot`, taken at
scrape time: per-tier and per-operation figures, the hit and miss counters,
node health, the journal, the memory tier and the event counts. So every
sample is the same figure the JSON endpoints show, and a cache with no
scraper pays only for the latency histograms (not kept with
CACHE_METRICS_ENABLED=false).

Names follow Prometheus' rules (base units, ``_total`` for counters) and,
for the latency histogram and connection counts, OpenTelemetry's
database-client conventions (``db.client.operation.duration``,
``db.client.connection.count``) translated to Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pitchey_cache.snapshot import CLUSTER_TIER, CacheSnapshot
from pitchey_cache.stats import LATENCY_BUCKETS
from pitchey_cache.tiers.base import TierCondition

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
STATUSES = ("healthy", "degraded", "unhealthy")
_BOUNDS = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]
# db.system.name of each tier, as OpenTelemetry names the backends.
_SYSTEM = {"redis-cluster": "redis", "native-redis": "redis", "upstash-redis": "redis"}


class CacheMetrics(Collector):
    """The cache's figures in Prometheus form; ``render()`` is the /metrics body."""

    def __init__(self, snapshot: Callable[[], CacheSnapshot]) -> None:
        self._snapshot = snapshot
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def __repr__(self) -> str:
        return f"<CacheMetrics [{len(self._snapshot().tiers)} tiers]>"

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        # One snapshot per scrape, so every sample describes the same instant.
        snapshot = self._snapshot()
        yield from self._operations(snapshot)
        yield from self._tiers(snapshot)
        yield from self._nodes(snapshot)
        yield from self._cache(snapshot)
        yield from self._read_path(snapshot)

    def _operations(self, snapshot: CacheSnapshot) -> Iterator[Metric]:
        operations = CounterMetricFamily(
            "pitchey_cache_operations",
            "Calls each tier was asked to serve, by operation and outcome (a failure "
            "fails over to the next tier).",
            labels=["tier", "operation", "outcome"],
        )
        duration = HistogramMetricFamily(
            "db_client_operation_duration",
            "Duration of calls to each tier, by operation, failures included.",
            labels=["db_system_name", "tier", "db_operation_name"],
            unit="seconds",
        )
        for state in snapshot.tiers:
            tier = state.name
            system = _SYSTEM.get(tier, "memory")
            for operation, figures in sorted(state.by_operation.items()):
                operations.add_metric([tier, operation, "success"], figures.successful)
                operations.add_metric([tier, operation, "failure"], figures.failed)
                if figures.buckets is None:
                    continue
                cumulative, running = [], 0
                for bound, count in zip(_BOUNDS, figures.buckets, strict=True):
                    running += count
                    cumulative.append((bound, running))
                duration.add_metric([system, tier, operation], cumulative, figures.total_seconds)
        yield operations
        yield duration

    def _tiers(self, snapshot: CacheSnapshot) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "pitchey_cache_tier_active",
            "1 for the tier calls go to first, 0 for the others.",
            labels=["tier"],
        )
        condition = GaugeMetricFamily(
            "pitchey_cache_tier_condition",
            "1 for each tier's current condition (healthy, degraded, partial, down).",
            labels=["tier", "condition"],
        )
        journal = GaugeMetricFamily(
            "pitchey_cache_journal_pending_keys",
            "Keys and patterns waiting to be invalidated on each tier before it serves them.",
            labels=["tier"],
        )
        connections = GaugeMetricFamily(
            "pitchey_cache_tier_connections",
            "Connections each tier holds open.",
            labels=["tier"],
        )
        in_use = GaugeMetricFamily(
            "db_client_connection_count",
            "Connections by state, where the driver can tell which are in use.",
            labels=["db_client_connection_pool_name", "db_client_connection_state"],
        )
        for tier in snapshot.tiers:
            active.add_metric([tier.name], 1.0 if tier.active else 0.0)
            for c in TierCondition:
                condition.add_metric([tier.name, str(c)], 1.0 if c is tier.condition else 0.0)
            journal.add_metric([tier.name], tier.journal_keys)
            pool = tier.pool
            connections.add_metric([tier.name], pool.total)
            if pool.active is not None and pool.idle is not None:
                in_use.add_metric([tier.name, "used"], pool.active)
                in_use.add_metric([tier.name, "idle"], pool.idle)
        yield from (active, condition, journal, connections, in_use)
        yield CounterMetricFamily(
            "pitchey_cache_failovers",
            "Times calls moved to a later tier because an earlier one went down.",
            value=snapshot.failovers,
        )
        yield CounterMetricFamily(
            "pitchey_cache_failbacks",
            "Times calls moved back to an earlier tier after it recovered.",
            value=snapshot.failbacks,
        )

    def _nodes(self, snapshot: CacheSnapshot) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "pitchey_cache_node_healthy",
            "1 while a server of a tier is healthy, 0 while it is down.",
            labels=["tier", "node", "role"],
        )
        failures = GaugeMetricFamily(
            "pitchey_cache_node_consecutive_failures",
            "Failed calls and probes of a server since its last success.",
            labels=["tier", "node", "role"],
        )
        elsewhere = CounterMetricFamily(
            "pitchey_cache_node_served_elsewhere",
            "Calls on a server's keys that another tier served (skipped or failed there).",
            labels=["tier", "node", "role"],
        )
        unserved = GaugeMetricFamily(
            "pitchey_cache_slots_served_elsewhere",
            "Hash slots of a cluster with no healthy master: their keys go to the next tier.",
            labels=["tier"],
        )
        for tier in snapshot.tiers:
            for node in tier.nodes:
                labels = [tier.name, node.address, node.role]
                healthy.add_metric(labels, 1.0 if node.healthy else 0.0)
                failures.add_metric(labels, node.failure_count)
                elsewhere.add_metric(labels, node.served_elsewhere)
            if tier.name == CLUSTER_TIER:
                unserved.add_metric([tier.name], tier.unserved_slot_count)
        yield healthy
        yield failures
        yield elsewhere
        yield unserved

    def _cache(self, snapshot: CacheSnapshot) -> Iterator[Metric]:
        c = snapshot.counters
        for name, value, text in (
            ("hits", c.hits, "Reads that found a value."),
            ("misses", c.misses, "Reads that found nothing (undecodable values included)."),
            ("undecodable", c.undecodable, "Reads of values this cache did not write."),
            ("sets", c.sets, "Keys written."),
            ("deletes", c.deletes, "Keys deleted."),
            ("loads", c.loads, "Loader calls by get_or_set, early refreshes included."),
            ("refreshes", c.refreshes, "Early refreshes run before a value expired."),
            ("refresh_failures", c.refresh_failures, "Early refreshes whose loader raised."),
            ("stale_served", c.stale_served, "Expired values served because the loader raised."),
            ("lock_waits", c.lock_waits, "Polls by callers waiting for a loader lock."),
        ):
            yield CounterMetricFamily(f"pitchey_cache_{name}", text, value=value)
        status = GaugeMetricFamily(
            "pitchey_cache_status",
            "1 for the status the health endpoint reports (healthy, degraded, unhealthy).",
            labels=["status"],
        )
        current = snapshot.status
        for s in STATUSES:
            status.add_metric([s], 1.0 if s == current else 0.0)
        yield status
        events = CounterMetricFamily(
            "pitchey_cache_events",
            "State changes by kind: node-down, node-up, failover, failback, replay, replay-failed.",
            labels=["kind"],
        )
        for kind, count in sorted(snapshot.event_counts.items()):
            events.add_metric([kind], count)
        yield events
        memory = snapshot.memory
        yield GaugeMetricFamily(
            "pitchey_cache_memory_entries",
            "Entries in the in-memory tier.",
            value=memory.entries,
        )
        yield GaugeMetricFamily(
            "pitchey_cache_memory_bytes",
            "Bytes of keys and values in the in-memory tier.",
            value=memory.bytes,
            unit="bytes",
        )
        yield CounterMetricFamily(
            "pitchey_cache_memory_evictions",
            "Entries the in-memory tier evicted to stay within its limits.",
            value=memory.evictions,
        )

    def _read_path(self, snapshot: CacheSnapshot) -> Iterator[Metric]:
        """The coalescer's and the near cache's figures, each only while it is on."""
        coalescing = snapshot.coalescing
        if coalescing is not None:
            for name, value, text in (
                ("direct", coalescing.direct, "Reads sent at once: nothing else was in flight."),
                ("joined", coalescing.joined, "Reads that joined a batch of one loop tick."),
                ("batches", coalescing.batches, "Batches sent as one multi-key read."),
                ("batched_keys", coalescing.batched_keys, "Distinct keys those batches carried."),
                (
                    "split",
                    coalescing.split,
                    "Batches split: key by key after failing, or per tier with a node down.",
                ),
            ):
                yield CounterMetricFamily(f"pitchey_cache_coalesced_{name}", text, value=value)
        near = snapshot.near
        if near is None:
            return
        c = near.counters
        for name, value, text in (
            ("hits", c.hits, "Reads answered from process memory."),
            ("misses", c.misses, "Reads the near cache sent to the tiers."),
            ("fills", c.fills, "Replies stored in the near cache."),
            ("refused_fills", c.refused_fills, "Replies not stored: changed while in flight."),
            ("invalidations", c.invalidations, "Keys dropped on Redis invalidation messages."),
            ("flushes", c.flushes, "Times the whole near cache was dropped."),
            ("evictions", c.evictions, "Entries evicted to stay within the limits."),
        ):
            yield CounterMetricFamily(f"pitchey_cache_near_{name}", text, value=value)
        yield GaugeMetricFamily(
            "pitchey_cache_near_entries", "Entries in the near cache.", value=near.entries
        )
        yield GaugeMetricFamily(
            "pitchey_cache_near_bytes",
            "Bytes of keys and values in the near cache.",
            value=near.bytes,
            unit="bytes",
        )
        yield GaugeMetricFamily(
            "pitchey_cache_near_filling",
            "1 while replies are stored: every invalidation listener subscribed, Redis serving.",
            value=1.0 if near.filling else 0.0,
        )
