"""A per-tier breaker: closed serves traffic, open bypasses the tier."""

from __future__ import annotations

from enum import StrEnum

from pitchey_cache.clock import Clock


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class Breaker:
    """Opens after ``max_failures`` consecutive failures, or at once on a failed probe.

    While open, callers skip the tier and pay nothing. ``probe_due`` turns
    true ``reopen_after`` seconds after opening (REDIS_FAILOVER_TIMEOUT); the
    router then probes the tier in the background and closes the breaker
    only once the probe and the journal replay have succeeded.
    """

    def __init__(self, *, max_failures: int, reopen_after: float, clock: Clock) -> None:
        self._max_failures = max_failures
        self._reopen_after = reopen_after
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.last_reason: str | None = None

    def __repr__(self) -> str:
        return f"<Breaker {self.state} [{self.consecutive_failures}/{self._max_failures} failures]>"

    @property
    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(self, reason: str) -> bool:
        """Count a failure; True when this one opened the breaker."""
        self.consecutive_failures += 1
        self.last_reason = reason
        if self.closed and self.consecutive_failures >= self._max_failures:
            self._open()
            return True
        return False

    def trip(self, reason: str) -> bool:
        """Open now (a probe failed); True when it was closed."""
        self.last_reason = reason
        if self.closed:
            self.consecutive_failures = max(self.consecutive_failures, 1)
            self._open()
            return True
        self.opened_at = self._clock.monotonic()
        return False

    def probe_due(self) -> bool:
        return (
            not self.closed
            and self.opened_at is not None
            and self._clock.monotonic() - self.opened_at >= self._reopen_after
        )

    def rearm(self) -> None:
        """A probe of the open tier failed: wait another full period."""
        self.opened_at = self._clock.monotonic()

    def close(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = None

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self._clock.monotonic()
