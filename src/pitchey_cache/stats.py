"""Counters behind every figure in the health and stats bodies.

Each figure is a counter that an event method bumps; derived figures are
properties that are ``None`` until there is something to derive them from.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# Upper bounds, in seconds, of the latency histogram buckets: from a fast
# in-memory call (0.1 ms) to a Redis timeout (10 s). One more bucket counts
# the rest (Prometheus' +Inf).
LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_FIRST_BOUND: Final = LATENCY_BUCKETS[0]


@dataclass(slots=True)
class OperationStats:
    """Operations one tier was asked to serve, and how they ended.

    With ``buckets`` (metrics on), also a latency histogram: ``buckets[i]``
    counts calls that took at most ``LATENCY_BUCKETS[i]`` seconds and more
    than the bound before; the last counts the slower ones.
    """

    successful: int = 0
    failed: int = 0
    total_seconds: float = 0.0
    buckets: list[int] | None = None

    @classmethod
    def with_histogram(cls) -> OperationStats:
        return cls(buckets=[0] * (len(LATENCY_BUCKETS) + 1))

    @classmethod
    def combined(cls, parts: Iterable[OperationStats]) -> OperationStats:
        """The sum of ``parts`` (a tier's figures over all its operations), no histogram."""
        out = cls()
        for part in parts:
            out.successful += part.successful
            out.failed += part.failed
            out.total_seconds += part.total_seconds
        return out

    @property
    def total(self) -> int:
        return self.successful + self.failed

    def record(self, ok: bool, seconds: float) -> None:
        if ok:
            self.successful += 1
        else:
            self.failed += 1
        self.total_seconds += seconds
        buckets = self.buckets
        if buckets is not None:
            # Most in-memory calls land in the first bucket: skip the search for them.
            buckets[0 if seconds <= _FIRST_BOUND else bisect_left(LATENCY_BUCKETS, seconds)] += 1

    @property
    def success_rate(self) -> float | None:
        """Fraction of operations that succeeded; None before the first one."""
        total = self.total
        return self.successful / total if total else None

    @property
    def average_ms(self) -> float | None:
        total = self.total
        return self.total_seconds * 1000 / total if total else None


@dataclass(slots=True)
class CacheStats:
    """What callers of the cache saw, whatever tier served them."""

    hits: int = 0
    misses: int = 0
    undecodable: int = 0
    sets: int = 0
    deletes: int = 0
    # get_or_set: loader calls (refreshes included), early refreshes run and
    # failed, stale values served after a loader error, polls of a lock held elsewhere.
    loads: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    stale_served: int = 0
    lock_waits: int = 0

    @property
    def hit_rate(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


@dataclass(slots=True)
class CoalescerStats:
    """What the read coalescer did: plain reads, batches sent, and the keys they carried."""

    # Reads sent at once because nothing else was in flight.
    direct: int = 0
    # Reads that joined a batch (including the ones whose key was already in it).
    joined: int = 0
    # Batches sent as one multi-key read, and the distinct keys they carried.
    batches: int = 0
    batched_keys: int = 0
    # Batches of one key, sent as a plain GET.
    singles: int = 0
    # Batches split: sent again as plain GETs after failing (an MGET held past its
    # deadline included), or sent as one batch per tier because a node of the first
    # tier was down for some of their keys.
    split: int = 0

    @property
    def average_batch(self) -> float | None:
        """Distinct keys per multi-key read; None before the first one."""
        return self.batched_keys / self.batches if self.batches else None


@dataclass(slots=True)
class NearCacheStats:
    """What the near cache did with reads, replies and invalidations."""

    hits: int = 0
    misses: int = 0
    # Replies stored, and replies not stored because the key changed (or a
    # flush came) while they were in flight.
    fills: int = 0
    refused_fills: int = 0
    # Keys dropped by the server's invalidations, and whole flushes.
    invalidations: int = 0
    flushes: int = 0
    evictions: int = 0


def percent(fraction: float | None) -> str | None:
    """``"99.00%"`` as the guide shows it; None when there is nothing measured."""
    return None if fraction is None else f"{fraction * 100:.2f}%"
