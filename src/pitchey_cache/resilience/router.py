"""Serve every call from the first tier that can, and keep the tiers consistent.

The router knows tiers only through :class:`~pitchey_cache.tiers.base.Tier`.
For each call it walks the chain: a tier whose breaker is open is skipped; a
tier that fails is charged, retried where a retry can help, and then the
next tier serves the same call. Writes are recorded in the invalidation
journal of every remote tier that did not take them, and a tier replays its
journal before it serves again, so no stale value is read after failback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pitchey_cache.clock import Clock
from pitchey_cache.errors import CacheError, CommandError, TierUnavailable
from pitchey_cache.events import Event, EventLog
from pitchey_cache.resilience.breaker import Breaker
from pitchey_cache.resilience.journal import InvalidationJournal
from pitchey_cache.stats import OperationStats
from pitchey_cache.tiers.base import Tier

_T = TypeVar("_T")

# Keys deleted per command when a journal is replayed.
_REPLAY_BATCH = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """REDIS_MAX_RETRIES extra attempts, REDIS_RETRY_DELAY apart, for retryable failures."""

    max_retries: int
    delay: float


@dataclass(slots=True)
class TierState:
    """The router's view of one tier."""

    tier: Tier
    breaker: Breaker
    operations: OperationStats = field(default_factory=OperationStats)
    replay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    probe_task: asyncio.Task[None] | None = None


class FailoverRouter:
    """Ordered tiers; the last one (in-memory) is never bypassed."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        max_failures: int,
        failover_timeout: float,
        retry: RetryPolicy,
        journal: InvalidationJournal,
        namespace_pattern: str,
        probe_timeout: float,
        clock: Clock,
        events: EventLog,
    ) -> None:
        if not tiers:
            raise ValueError("a router needs at least one tier")
        self._clock = clock
        self._retry = retry
        self._max_failures = max_failures
        self.journal = journal
        self.events = events
        self._namespace_pattern = namespace_pattern
        self._probe_timeout = probe_timeout
        self.states = [
            TierState(
                tier,
                Breaker(max_failures=max_failures, reopen_after=failover_timeout, clock=clock),
            )
            for tier in tiers
        ]
        self._last = self.states[-1]
        self.failovers = 0
        self.failbacks = 0

    def __repr__(self) -> str:
        chain = " -> ".join(f"{s.tier.name} ({s.breaker.state})" for s in self.states)
        return f"<FailoverRouter [{chain}] active={self.active.tier.name}>"

    @property
    def tiers(self) -> list[Tier]:
        return [s.tier for s in self.states]

    @property
    def active(self) -> TierState:
        """The tier the next call goes to first."""
        for state in self.states:
            if state.breaker.closed:
                return state
        return self._last

    async def execute(
        self,
        call: Callable[[Tier], Awaitable[_T]],
        *,
        key: str | None = None,
        writes: Sequence[str] = (),
        pattern: str | None = None,
        retry_safe: bool = True,
    ) -> _T:
        """Run ``call`` on the first tier that serves it.

        ``key`` is charged when a node fails; ``writes`` and ``pattern`` are
        what the call changes, for the journals of the tiers it skipped;
        ``retry_safe`` is False for calls that must not run twice (INCR).
        """
        for state in self.states:
            if not state.breaker.closed and state is not self._last:
                if state.breaker.probe_due():
                    self._probe_in_background(state)
                continue
            try:
                result = await self._attempt(
                    state,
                    call=call,
                    key=key,
                    writes=writes,
                    pattern=pattern,
                    retry_safe=retry_safe,
                )
            except TierUnavailable:
                continue
            if writes or pattern is not None:
                await self._invalidate_elsewhere(state, writes, pattern)
            return result
        raise AssertionError("unreachable: the last tier never raises TierUnavailable")

    async def _attempt(
        self,
        state: TierState,
        *,
        call: Callable[[Tier], Awaitable[_T]],
        key: str | None,
        writes: Sequence[str],
        pattern: str | None,
        retry_safe: bool,
    ) -> _T:
        tier = state.tier
        attempts = 1 + (self._retry.max_retries if retry_safe else 0)
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                if self.journal.pending(tier.name):
                    await self._replay(state)
                result = await call(tier)
            except Exception as exc:
                error = exc if isinstance(exc, CacheError) else tier.translate(exc)
                elapsed = time.perf_counter() - started
                if isinstance(error, CommandError):
                    state.operations.record(True, elapsed)
                    if error is exc:
                        raise
                    raise error from exc
                if not isinstance(error, TierUnavailable):
                    raise
                state.operations.record(False, elapsed)
                self._charge(state, key, error)
                if writes or pattern is not None:
                    # The write may or may not have happened on this tier.
                    self.journal.record(tier.name, writes, pattern)
                if error.retryable and attempt + 1 < attempts and state.breaker.closed:
                    await self._clock.sleep(self._retry.delay)
                    continue
                raise error from None
            state.operations.record(True, time.perf_counter() - started)
            if state.breaker.consecutive_failures:
                state.breaker.record_success()
                node = tier.node_for(key)
                if node is not None:
                    node.record_success()
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    def _charge(self, state: TierState, key: str | None, error: TierUnavailable) -> None:
        node = state.tier.node_for(key)
        if node is not None:
            node.record_failure(error.reason, self._max_failures)
        if state is self._last:
            return
        if state.breaker.record_failure(error.reason):
            self._note_failover(state, error.reason)

    def _note_failover(self, state: TierState, reason: str) -> None:
        self.failovers += 1
        self.events.emit(
            Event(
                self._clock.now(),
                "failover",
                state.tier.name,
                f"bypassed ({reason}); serving from {self.active.tier.name}",
            )
        )

    async def _invalidate_elsewhere(
        self, served: TierState, writes: Sequence[str], pattern: str | None
    ) -> None:
        """Other tiers' copies of what ``served`` just changed may be stale now."""
        for state in self.states:
            if state is served:
                continue
            if state.tier.distributed:
                self.journal.record(state.tier.name, writes, pattern)
                continue
            # A local tier invalidates at once: it cannot fail and costs microseconds.
            if writes:
                await state.tier.delete(writes)
            if pattern is not None:
                await state.tier.delete_matching(pattern)

    async def _replay(self, state: TierState) -> None:
        """Invalidate on ``state.tier`` everything its journal holds; raise if it can't."""
        tier = state.tier
        async with state.replay_lock:
            entry = self.journal.take(tier.name)
            if not entry:
                return
            try:
                if entry.overflowed:
                    await tier.delete_matching(self._namespace_pattern)
                else:
                    keys = sorted(entry.keys)
                    for start in range(0, len(keys), _REPLAY_BATCH):
                        await tier.delete(keys[start : start + _REPLAY_BATCH])
                    for pattern in entry.patterns:
                        await tier.delete_matching(pattern)
            except Exception as exc:  # noqa: BLE001 - mapped below; the entry must go back
                self.journal.restore(tier.name, entry)
                error = exc if isinstance(exc, CacheError) else tier.translate(exc)
                self.events.emit(Event(self._clock.now(), "replay-failed", tier.name, str(error)))
                if isinstance(error, TierUnavailable):
                    raise error from None
                raise TierUnavailable(tier.name, f"journal replay failed: {error}") from None
            what = (
                "the whole prefix"
                if entry.overflowed
                else (f"{len(entry.keys)} keys, {len(entry.patterns)} patterns")
            )
            self.events.emit(Event(self._clock.now(), "replay", tier.name, f"invalidated {what}"))

    # -- probes: the health checker and due breakers -------------------------

    def _probe_in_background(self, state: TierState) -> asyncio.Task[None]:
        """Start a probe of ``state``'s tier unless one is running; return the running one."""
        if state.probe_task is None or state.probe_task.done():
            state.probe_task = asyncio.create_task(
                self._probe(state), name=f"pitchey-cache probe {state.tier.name}"
            )
        return state.probe_task

    async def probe(self, state: TierState) -> None:
        """Ping every node of a tier; bypass it on failure, restore it on success.

        One probe per tier at a time: a caller that arrives while one runs
        waits for that one.
        """
        await asyncio.shield(self._probe_in_background(state))

    async def _probe(self, state: TierState) -> None:
        tier = state.tier
        error: str | None = None
        try:
            async with asyncio.timeout(self._probe_timeout):
                await tier.ping()
        except TimeoutError:
            error = f"probe timed out after {self._probe_timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - a failed probe is the answer, whatever failed
            translated = exc if isinstance(exc, CacheError) else tier.translate(exc)
            error = getattr(translated, "reason", str(translated))
        now = self._clock.now()
        for node in tier.nodes:
            node.record_probe(now, error)
        if state is self._last:
            return
        if error is not None:
            if state.breaker.trip(error):
                self._note_failover(state, error)
            return
        if state.breaker.closed:
            state.breaker.record_success()
            return
        try:
            if self.journal.pending(tier.name):
                await self._replay(state)
        except TierUnavailable:
            state.breaker.rearm()
            return
        state.breaker.close()
        self.failbacks += 1
        self.events.emit(
            Event(
                now, "failback", tier.name, f"healthy again; serving from {self.active.tier.name}"
            )
        )

    async def close(self) -> None:
        tasks = [s.probe_task for s in self.states if s.probe_task and not s.probe_task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
