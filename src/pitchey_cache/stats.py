"""Counters behind every figure in the health and stats bodies.

Each figure is a counter that an event method bumps; derived figures are
properties that are ``None`` until there is something to derive them from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class OperationStats:
    """Operations one tier was asked to serve, and how they ended."""

    successful: int = 0
    failed: int = 0
    total_seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.successful + self.failed

    def record(self, ok: bool, seconds: float) -> None:
        if ok:
            self.successful += 1
        else:
            self.failed += 1
        self.total_seconds += seconds

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

    @property
    def hit_rate(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


def percent(fraction: float | None) -> str | None:
    """``"99.00%"`` as the guide shows it; None when there is nothing measured."""
    return None if fraction is None else f"{fraction * 100:.2f}%"
