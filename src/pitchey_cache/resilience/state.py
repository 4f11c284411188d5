"""What the router and the health checker share about each tier of the chain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pitchey_cache.stats import OperationStats
from pitchey_cache.tiers.base import NodeHealth, Tier


@dataclass(slots=True)
class TierState:
    """The router's and the health checker's view of one tier."""

    tier: Tier
    # Calls by operation (``get``, ``set``...); with latency histograms when metrics are on.
    by_operation: dict[str, OperationStats] = field(default_factory=dict)
    probe_task: asyncio.Task[None] | None = None
    drain_task: asyncio.Task[None] | None = None
    # When a node is down, the monotonic time of the next background probe.
    next_probe_at: float | None = None
    # Failures of multi-key calls, which can't be charged to one node.
    unattributed_failures: int = 0
    reachable: bool = True
    # True while some node has failures or is down; False lets calls skip the
    # per-key node checks. Updated wherever node health changes.
    suspect: bool = False
    # What a write served here makes stale elsewhere: remote tiers' names for
    # the journal, and local tiers to invalidate at once.
    remote_others: tuple[str, ...] = ()
    local_others: tuple[Tier, ...] = ()
    # Calls waiting on this tier right now (task -> the keys it touches), and the
    # ones told to give up because their node was lost (task -> why).
    in_flight: dict[asyncio.Task[Any], Sequence[str]] = field(default_factory=dict)
    aborted: dict[asyncio.Task[Any], str] = field(default_factory=dict)

    def abort_calls_on(self, node: NodeHealth, reason: str) -> int:
        """Make every call waiting on ``node`` give up now; the router serves it elsewhere.

        The waiting task is cancelled, as ``asyncio.timeout`` does, and the router
        turns that cancellation back into a failure of this tier (see
        ``FailoverRouter._attempt``). Returns how many calls were told.
        """
        tier = self.tier
        told = 0
        for task, keys in list(self.in_flight.items()):
            if task in self.aborted:
                continue
            if keys:
                involved = any(tier.node_for(key) is node for key in keys)
            else:
                involved = len(tier.nodes) == 1
            if involved:
                self.aborted[task] = f"{node.address}: {reason}"
                task.cancel()
                told += 1
        return told
