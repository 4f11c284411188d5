"""A typed snapshot of a cache's state, and the endpoint bodies made from it.

:meth:`Cache.snapshot() <pitchey_cache.Cache.snapshot>` copies every figure at
one instant into a :class:`CacheSnapshot`. The health, stats and cluster
bodies (the guide's JSON, which the dashboard and ``pitchey-cache status``
read) and the Prometheus metrics are all rendered from it, so they show the
same figures, and ``Cache`` stays the facade of the data path.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pitchey_cache.clock import iso
from pitchey_cache.events import Event
from pitchey_cache.stats import (
    CacheStats,
    CoalescerStats,
    NearCacheStats,
    OperationStats,
    percent,
)
from pitchey_cache.tiers.base import PoolFigures, TierCondition

if TYPE_CHECKING:
    from pitchey_cache.resilience.router import FailoverRouter
    from pitchey_cache.resilience.state import TierState
    from pitchey_cache.tiers.memory import MemoryTier

CLUSTER_TIER = "redis-cluster"


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One server of a tier."""

    address: str
    role: str
    healthy: bool
    failure_count: int
    last_health_check: datetime | None
    last_error: str | None
    slots: tuple[tuple[int, int], ...]
    pool_connections: int
    served_elsewhere: int  # calls on its keys that another tier served


@dataclass(frozen=True, slots=True)
class TierSnapshot:
    """One tier of the chain, as the router sees it."""

    name: str
    target: str  # the tier's own description: its address or seeds, no secret
    distributed: bool
    active: bool
    condition: TierCondition
    # Calls by operation, with latency histograms when metrics are on.
    by_operation: Mapping[str, OperationStats]
    pool: PoolFigures
    nodes: tuple[NodeSnapshot, ...]
    journal_pending: bool
    journal_keys: int
    cluster_state: str | None  # CLUSTER INFO's cluster_state, on the cluster tier
    # A cluster's hash slot ranges with no healthy master: their keys are served elsewhere.
    unserved_slots: tuple[tuple[int, int], ...]

    @property
    def unserved_slot_count(self) -> int:
        return sum(high - low + 1 for low, high in self.unserved_slots)

    @property
    def operations(self) -> OperationStats:
        """All operations together (no histogram)."""
        return OperationStats.combined(self.by_operation.values())

    @property
    def healthy_nodes(self) -> int:
        return sum(1 for node in self.nodes if node.healthy)


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """The in-memory tier's contents and limits."""

    entries: int
    bytes: int
    max_entries: int
    max_bytes: int
    evictions: int


@dataclass(frozen=True, slots=True)
class NearSnapshot:
    """The near cache (CACHE_NEAR_CACHE): its counters, contents, limits and listeners."""

    filling: bool  # whether replies are stored now
    counters: NearCacheStats
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int
    listeners: Mapping[str, bool]  # node address -> subscribed


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """A cache's state at one instant; ``tiers`` in chain order (the first is preferred)."""

    status: str  # healthy, degraded or unhealthy: see Cache.status
    uptime_ms: int
    tiers: tuple[TierSnapshot, ...]
    counters: CacheStats
    failovers: int
    failbacks: int
    journal_size: int
    memory: MemorySnapshot
    health_checks: int
    events: tuple[Event, ...]  # the most recent ones kept
    event_counts: Mapping[str, int]  # every event since start, by kind
    # The read path's layers, None while they are off (CACHE_COALESCE, CACHE_NEAR_CACHE).
    coalescing: CoalescerStats | None = None
    near: NearSnapshot | None = None

    @property
    def preferred(self) -> TierSnapshot:
        return self.tiers[0]

    @property
    def active(self) -> TierSnapshot:
        return next(tier for tier in self.tiers if tier.active)


def take_snapshot(
    *,
    router: FailoverRouter,
    status: str,
    uptime_ms: int,
    counters: CacheStats,
    memory: MemoryTier,
    max_entries: int,
    max_bytes: int,
    health_checks: int,
    coalescing: CoalescerStats | None = None,
    near: NearSnapshot | None = None,
) -> CacheSnapshot:
    """Copy the figures of ``router`` and the rest into a snapshot."""
    journal = router.journal
    events = router.events
    return CacheSnapshot(
        status=status,
        uptime_ms=uptime_ms,
        tiers=tuple(_tier(state, router) for state in router.states),
        counters=copy.copy(counters),
        failovers=router.failovers,
        failbacks=router.failbacks,
        journal_size=journal.size,
        memory=MemorySnapshot(
            entries=memory.entry_count,
            bytes=memory.byte_count,
            max_entries=max_entries,
            max_bytes=max_bytes,
            evictions=memory.evictions,
        ),
        health_checks=health_checks,
        events=tuple(events.recent()),
        event_counts=dict(events.counts),
        coalescing=copy.copy(coalescing),
        near=near,
    )


def _tier(state: TierState, router: FailoverRouter) -> TierSnapshot:
    tier = state.tier
    return TierSnapshot(
        name=tier.name,
        target=tier.describe(),
        distributed=tier.distributed,
        active=state is router.active,
        condition=tier.condition(),
        by_operation={
            name: OperationStats(
                s.successful,
                s.failed,
                s.total_seconds,
                None if s.buckets is None else list(s.buckets),
            )
            for name, s in state.by_operation.items()
        },
        pool=tier.connection_pool(),
        nodes=tuple(
            NodeSnapshot(
                address=node.address,
                role=node.role,
                healthy=node.healthy,
                failure_count=node.failure_count,
                last_health_check=node.last_health_check,
                last_error=node.last_error,
                slots=node.slots,
                pool_connections=tier.pool_connections(node),
                served_elsewhere=node.served_elsewhere,
            )
            for node in tier.nodes
        ),
        journal_pending=router.journal.pending(tier.name),
        journal_keys=router.journal.count(tier.name),
        cluster_state=getattr(tier, "cluster_state", None),
        unserved_slots=tier.unserved_slots(),
    )


# -- the endpoint bodies ------------------------------------------------------------


# Every figure of the health body is this process's own: a `serve` sidecar counts only
# the calls made through it, not those of the application processes beside it.
_PROCESS_SCOPE = (
    "the figures count this process's own cache calls and connections; "
    "every process that uses the cache keeps its own"
)


def health_body(snapshot: CacheSnapshot) -> dict[str, Any]:
    """``GET /api/health/cache``: the guide's shape.

    ``type`` and ``distributed`` describe the tier serving now; the ``cluster``
    block describes the first (preferred) tier of the chain, so an outage shows
    as its failed nodes and failed operations. ``process`` (beyond the guide)
    says whose figures these are.
    """
    active = snapshot.active
    return {
        "type": active.name,
        "distributed": active.distributed,
        "status": snapshot.status,
        "cluster": _tier_block(snapshot.preferred, snapshot.uptime_ms),
        "process": {"pid": os.getpid(), "scope": _PROCESS_SCOPE},
    }


def stats_body(snapshot: CacheSnapshot) -> dict[str, Any]:
    """``GET /api/admin/cache/stats``: every tier, the cache's own counters, recent events."""
    c = snapshot.counters
    tiers = []
    for tier in snapshot.tiers:
        block = _tier_block(tier, snapshot.uptime_ms, detailed=True)
        block.pop("enabled")
        tiers.append(
            {
                "name": tier.name,
                "target": tier.target,
                "active": tier.active,
                "condition": str(tier.condition),
                "journalPending": tier.journal_pending,
                **block,
            }
        )
    memory = snapshot.memory
    return {
        "activeTier": snapshot.active.name,
        "status": snapshot.status,
        "uptime": snapshot.uptime_ms,
        "cache": {
            "hits": c.hits,
            "misses": c.misses,
            "hitRate": percent(c.hit_rate),
            "undecodable": c.undecodable,
            "sets": c.sets,
            "deletes": c.deletes,
            "loads": c.loads,
            "refreshes": c.refreshes,
            "refreshFailures": c.refresh_failures,
            "staleServed": c.stale_served,
            "lockWaits": c.lock_waits,
        },
        "failovers": snapshot.failovers,
        "failbacks": snapshot.failbacks,
        "journal": {"pending": snapshot.journal_size},
        "memory": {
            "entries": memory.entries,
            "bytes": memory.bytes,
            "maxEntries": memory.max_entries,
            "maxBytes": memory.max_bytes,
            "evictions": memory.evictions,
        },
        "healthChecks": snapshot.health_checks,
        "coalescing": _coalescing_block(snapshot.coalescing),
        "near": _near_block(snapshot.near),
        "tiers": tiers,
        "events": [e.as_json() for e in snapshot.events],
    }


def _coalescing_block(figures: CoalescerStats | None) -> dict[str, Any]:
    shown = figures or CoalescerStats()
    return {
        "enabled": figures is not None,
        "direct": shown.direct,
        "joined": shown.joined,
        "batches": shown.batches,
        "batchedKeys": shown.batched_keys,
        "singles": shown.singles,
        "split": shown.split,
    }


def _near_block(near: NearSnapshot | None) -> dict[str, Any]:
    if near is None:
        return {"enabled": False}
    c = near.counters
    return {
        "enabled": True,
        "filling": near.filling,
        "hits": c.hits,
        "misses": c.misses,
        "fills": c.fills,
        "refusedFills": c.refused_fills,
        "invalidations": c.invalidations,
        "flushes": c.flushes,
        "evictions": c.evictions,
        "entries": near.entries,
        "bytes": near.bytes,
        "maxEntries": near.max_entries,
        "maxBytes": near.max_bytes,
        "listeners": dict(near.listeners),
    }


def cluster_body(snapshot: CacheSnapshot) -> dict[str, Any]:
    """``GET /api/admin/cache/cluster``: the cluster tier's topology, when there is one."""
    for tier in snapshot.tiers:
        if tier.name == CLUSTER_TIER:
            return {
                **_tier_block(tier, snapshot.uptime_ms, detailed=True),
                "condition": str(tier.condition),
                "clusterState": tier.cluster_state,
                "seeds": tier.target,
            }
    return {
        "enabled": False,
        "message": "no Redis Cluster is configured (REDIS_CLUSTER_ENABLED=false)",
        "nodes": [],
    }


def _tier_block(tier: TierSnapshot, uptime_ms: int, *, detailed: bool = False) -> dict[str, Any]:
    """The guide's per-tier block; ``detailed`` adds each node's role, slots and last
    error, and the exact total response time, for the admin endpoints."""
    ops = tier.operations
    performance: dict[str, Any] = {
        "averageResponseTime": None if ops.average_ms is None else round(ops.average_ms, 3),
        "uptime": uptime_ms,
    }
    if detailed:
        # Exact, unlike average x total: what a poller diffs for recent latency.
        performance["totalResponseTime"] = round(ops.total_seconds * 1000, 3)
    healthy = tier.healthy_nodes
    return {
        "enabled": tier.name == CLUSTER_TIER,
        "totalNodes": len(tier.nodes),
        "healthyNodes": healthy,
        "failedNodes": len(tier.nodes) - healthy,
        "operations": {
            "total": ops.total,
            "successful": ops.successful,
            "failed": ops.failed,
            "successRate": percent(ops.success_rate),
        },
        "performance": performance,
        "connectionPool": {
            "totalConnections": tier.pool.total,
            "activeConnections": tier.pool.active,
            "idleConnections": tier.pool.idle,
        },
        "nodes": [_node_body(node, detailed=detailed) for node in tier.nodes],
        **(_slots_block(tier) if tier.name == CLUSTER_TIER else {}),
    }


def _slots_block(tier: TierSnapshot) -> dict[str, Any]:
    """During a shard outage, which hash slots' keys another tier serves."""
    return {
        "slotsServedElsewhere": tier.unserved_slot_count,
        "slotRangesServedElsewhere": [list(r) for r in tier.unserved_slots],
    }


def _node_body(node: NodeSnapshot, *, detailed: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "address": node.address,
        "healthy": node.healthy,
        "failureCount": node.failure_count,
        "lastHealthCheck": iso(node.last_health_check),
        "poolConnections": node.pool_connections,
        "servedElsewhere": node.served_elsewhere,
    }
    if detailed:
        body["role"] = node.role
        body["slots"] = [list(r) for r in node.slots]
        body["lastError"] = node.last_error
    return body
