"""Serve every call from the first tier that can, and keep the tiers consistent.

The router knows tiers only through :class:`~pitchey_cache.tiers.base.Tier`.
For each call it walks the chain. A tier is skipped when a node serving the
call's keys is unhealthy, so callers stop paying timeouts; otherwise the call
runs there, and if it fails the failure is charged to the key's node,
retried where a retry can help, and the next tier serves the same call.

Writes are recorded in the invalidation journal of every remote tier that did
not take them; before a tier serves a key, the journal's pending entries for
that key are invalidated there. So no stale value is read after failback,
even while some keys of a tier are still unreachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pitchey_cache.clock import Clock
from pitchey_cache.errors import CacheError, TierUnavailable
from pitchey_cache.events import Event, EventLog
from pitchey_cache.globs import key_matcher
from pitchey_cache.resilience.health import HealthChecker
from pitchey_cache.resilience.journal import InvalidationJournal
from pitchey_cache.resilience.state import TierState
from pitchey_cache.stats import OperationStats
from pitchey_cache.tiers.base import Tier

_T = TypeVar("_T")

# Keys deleted per command when a journal is drained.
_DRAIN_BATCH = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """REDIS_MAX_RETRIES extra attempts, REDIS_RETRY_DELAY apart, for retryable failures."""

    max_retries: int
    delay: float


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How node health is judged: the failover, health and heartbeat settings, in seconds."""

    max_failures: int
    failover_timeout: float
    probe_timeout: float
    health_interval: float
    heartbeat_interval: float = 0.0
    heartbeat_timeout: float = 1.0


class FailoverRouter:
    """Ordered tiers; the last one (in-memory) is never skipped.

    Node health is the :class:`HealthChecker`'s (``router.health``): the
    router charges failed calls to it, credits successful ones, and skips
    tiers whose nodes it says are down.
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        health: HealthPolicy,
        retry: RetryPolicy,
        journal: InvalidationJournal,
        namespace_pattern: str,
        clock: Clock,
        events: EventLog,
        histograms: bool = True,
    ) -> None:
        if not tiers:
            raise ValueError("a router needs at least one tier")
        self._clock = clock
        self._histograms = histograms
        self._retry = retry
        self._namespace_pattern = namespace_pattern
        self.journal = journal
        self.events = events
        self.states = [TierState(tier) for tier in tiers]
        for state in self.states:
            others = [s.tier for s in self.states if s is not state]
            state.remote_others = tuple(t.name for t in others if t.distributed)
            state.local_others = tuple(t for t in others if not t.distributed)
        self._last = self.states[-1]
        # Told of every write when it ends, however it ends (the near cache forgets its keys).
        self._write_watchers: list[Callable[[Sequence[str], str | None], None]] = []
        self.health = HealthChecker(
            self.states,
            max_failures=health.max_failures,
            failover_timeout=health.failover_timeout,
            probe_timeout=health.probe_timeout,
            interval=health.health_interval,
            heartbeat_interval=health.heartbeat_interval,
            heartbeat_timeout=health.heartbeat_timeout,
            clock=clock,
            events=events,
            recovered=self._after_recovery,
            serving=self._drain_if_pending,
        )

    def __repr__(self) -> str:
        chain = " -> ".join(f"{s.tier.name} ({s.tier.condition()})" for s in self.states)
        return f"<FailoverRouter [{chain}] active={self.active.tier.name}>"

    @property
    def tiers(self) -> list[Tier]:
        return [s.tier for s in self.states]

    @property
    def active(self) -> TierState:
        """The first tier that can serve some keys: where calls go first."""
        return self.health.active

    @property
    def failovers(self) -> int:
        return self.health.failovers

    @property
    def failbacks(self) -> int:
        return self.health.failbacks

    def after_writes(
        self, callback: Callable[[Sequence[str], str | None], None]
    ) -> Callable[[], None]:
        """Call ``callback(keys, pattern)`` when each write ends, served, failed or
        cancelled: it may have changed ``keys`` on some tier. Returns the unsubscribe."""
        self._write_watchers.append(callback)
        return lambda: self._write_watchers.remove(callback)

    async def execute(
        self,
        operation: str,
        call: Callable[[Tier], Awaitable[_T]],
        *,
        keys: Sequence[str] = (),
        writes: bool = False,
        pattern: str | None = None,
        retry_safe: bool = True,
        fall_through: bool = True,
    ) -> _T:
        """Run ``call`` on the first tier that serves it.

        ``operation`` names the call in the per-operation figures (``get``);
        ``keys`` are the full keys the call touches; ``writes`` says whether it
        changes them; ``pattern`` is the glob a pattern delete removes;
        ``retry_safe`` is False for calls that must not run twice (INCR).
        ``fall_through=False``: a call that fails on a tier raises its
        ``TierUnavailable`` instead of being served by the next tier; the
        coalescer then sends its batch key by key, so that only the keys of the
        node that failed go elsewhere. Such a failure charges no node: a
        multi-key read can fail where single reads do not (TRYAGAIN while its
        slot migrates), and the key-by-key reads charge whichever node fails them.
        """
        try:
            for state in self.states:
                if state is not self._last:
                    if state.suspect and not state.tier.serves(keys):
                        self._split_instead(state, keys, fall_through)
                        self.health.served_elsewhere(state, keys)
                        self.health.probe_if_due(state)
                        continue
                    if self.journal.pending(state.tier.name) and self._awaits_drain(
                        state, keys, pattern
                    ):
                        self._split_instead(state, keys, fall_through)
                        self.health.served_elsewhere(state, keys)
                        continue
                try:
                    result = await self._attempt(
                        state, operation, call, keys, writes, pattern, retry_safe, fall_through
                    )
                except TierUnavailable:
                    if not fall_through:
                        raise
                    self.health.served_elsewhere(state, keys)
                    continue
                if writes:
                    await self._invalidate_elsewhere(state, keys, pattern)
                return result
            raise AssertionError("unreachable: the last tier never raises TierUnavailable")
        finally:
            if writes:
                for watcher in self._write_watchers:
                    watcher(keys, pattern)

    def _split_instead(self, state: TierState, keys: Sequence[str], fall_through: bool) -> None:
        """Raise for a batch (``fall_through=False``) that this tier skips as a whole while
        it would serve some of its keys (a node down, a key fenced): its caller sends the
        keys one by one, so that only the skipped ones go to the next tier."""
        if fall_through or len(keys) < 2:  # noqa: PLR2004 - one key is never split
            return
        if any(
            state.tier.serves((key,)) and not self._awaits_drain(state, (key,), None)
            for key in keys
        ):
            raise TierUnavailable(
                state.tier.name, "a batch whose keys this tier serves only in part"
            )

    async def _attempt(  # noqa: PLR0917 - the hot path; execute's arguments, passed on
        self,
        state: TierState,
        operation: str,
        call: Callable[[Tier], Awaitable[_T]],
        keys: Sequence[str],
        writes: bool,
        pattern: str | None,
        retry_safe: bool,
        charge: bool,
    ) -> _T:
        tier = state.tier
        attempts = 1 + (self._retry.max_retries if retry_safe else 0)
        # Registered while it waits on the tier, so that a lost node's calls can be
        # told to give up at once (TierState.abort_calls_on).
        task = asyncio.current_task()
        assert task is not None, "cache calls run in a task"  # noqa: S101 - asyncio's own rule
        error: TierUnavailable | None
        for attempt in range(attempts):
            started = time.perf_counter()
            sent_at = self._clock.monotonic()
            state.in_flight[task] = keys
            try:
                if keys and self.journal.pending(tier.name):
                    await self._invalidate_pending(state, keys)
                result = await call(tier)
            except TierUnavailable as exc:
                error = exc
            except asyncio.CancelledError:
                reason = self._given_up(state, task)
                if reason is None:
                    raise
                error = TierUnavailable(tier.name, reason)
            except CacheError:
                # The caller's own mistake (CommandError...): the tier answered.
                self._record(state, operation, True, time.perf_counter() - started)
                raise
            except Exception as exc:  # noqa: BLE001 - a tier's unmapped error is still an outage
                error = TierUnavailable(tier.name, f"unexpected {type(exc).__name__}")
            else:
                error = None
            finally:
                del state.in_flight[task]
            elapsed = time.perf_counter() - started
            self._record(state, operation, error is None, elapsed)
            if error is None:
                if state.suspect:
                    await self.health.credit(state, keys)
                return result
            self._failed(
                state,
                error,
                keys,
                pattern if writes else None,
                sent_at if writes else None,
                charge=charge,
            )
            if not await self._retry_after(error, state, task, keys, last=attempt + 1 == attempts):
                raise error from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def _retry_after(
        self,
        error: TierUnavailable,
        state: TierState,
        task: asyncio.Task[object],
        keys: Sequence[str],
        *,
        last: bool,
    ) -> bool:
        """Wait REDIS_RETRY_DELAY when the same tier may serve a retry; whether it may.

        The wait counts as waiting on the tier: a node lost meanwhile ends it at once
        (and a retry on it would wait in the driver for a command timeout).
        """
        if last or not error.retryable or not state.tier.serves(keys):
            return False
        state.in_flight[task] = keys
        try:
            await self._clock.sleep(self._retry.delay)
        except asyncio.CancelledError:
            if self._given_up(state, task) is None:
                raise
            return False
        finally:
            state.in_flight.pop(task, None)
        return state.tier.serves(keys)

    @staticmethod
    def _given_up(state: TierState, task: asyncio.Task[object]) -> str | None:
        """Why the health checker told this cancelled call to give up (its node was
        lost), or None when the cancellation is the caller's own and must go on."""
        reason = state.aborted.pop(task, None)
        if reason is None or task.uncancel() > 0:
            return None
        return reason

    def _failed(
        self,
        state: TierState,
        error: TierUnavailable,
        keys: Sequence[str],
        pattern: str | None,
        write_sent_at: float | None,
        *,
        charge: bool,
    ) -> None:
        """Journal a failed write, and charge the failure to the node it was on."""
        if write_sent_at is not None:
            # The write may or may not have happened on this tier, and may still land
            # there until the driver gives it up (a request retried through CLUSTERDOWN
            # was seen landing after the cluster was back).
            fence = write_sent_at + state.tier.request_deadline
            self.journal.record(state.tier.name, keys, pattern, fence_until=fence)
        if state is self._last or not charge:
            return
        if error.node_fault:
            self.health.charge(state, keys, error.reason)
        else:
            # A slot is moving: learn which, so timeouts on it aren't charged.
            self.health.probe_soon(state)

    def _record(self, state: TierState, operation: str, ok: bool, seconds: float) -> None:
        figures = state.by_operation.get(operation)
        if figures is None:
            figures = OperationStats.with_histogram() if self._histograms else OperationStats()
            state.by_operation[operation] = figures
        figures.record(ok, seconds)

    # -- the invalidation journal -----------------------------------------------

    async def _invalidate_elsewhere(
        self, served: TierState, keys: Sequence[str], pattern: str | None
    ) -> None:
        """Other tiers' copies of what ``served`` just changed may be stale now."""
        for name in served.remote_others:
            self.journal.record(name, keys, pattern)
        # A local tier invalidates at once: it cannot fail and costs microseconds.
        for tier in served.local_others:
            if tier.known_empty:
                continue
            if keys:
                await tier.delete(keys)
            if pattern is not None:
                await tier.delete_matching(pattern)

    def _awaits_drain(self, state: TierState, keys: Sequence[str], pattern: str | None) -> bool:
        """Whether the call must skip this tier until a background drain has run.

        An overflowed journal needs the whole prefix deleted, and a pending
        pattern a SCAN: too slow for a caller to wait on. The drain starts
        (once) and the call is served by the next tier meanwhile.
        """
        entry = self.journal.entry(state.tier.name)
        if entry is None:
            return False
        if entry.fenced(keys, self._clock.monotonic()):
            # A failed write of one of these keys may still land there: not yet.
            return True
        blocked = entry.overflowed or (
            pattern is None
            and bool(entry.patterns)
            and any(key_matcher(p)(k) for p in entry.patterns for k in keys)
        )
        if blocked:
            self._start_drain(state)
        return blocked

    async def _invalidate_pending(self, state: TierState, keys: Sequence[str]) -> None:
        """Delete on this tier the call's keys that the journal holds; raise if it can't."""
        entry = self.journal.entry(state.tier.name)
        if entry is None:
            return
        stale = {k: entry.keys[k] for k in keys if k in entry.keys}
        if stale:
            await state.tier.delete(list(stale))
            self.journal.settle(state.tier.name, keys=stale)

    def _start_drain(self, state: TierState) -> None:
        if state.drain_task is None or state.drain_task.done():
            state.drain_task = asyncio.create_task(
                self._drain(state), name=f"pitchey-cache drain {state.tier.name}"
            )

    async def _drain(self, state: TierState) -> None:
        """Invalidate what the journal holds for a tier, in the background; best effort."""
        tier = state.tier
        entry = self.journal.entry(tier.name)
        if entry is None or not tier.serves(()):
            return
        now = self._clock.monotonic()
        try:
            if entry.overflowed:
                if any(until > now for until in entry.fences.values()):
                    return  # a failed write may still land; the next call starts it again
                await tier.delete_matching(self._namespace_pattern)
                self.journal.settle_overflow(tier.name)
                self._emit("replay", tier.name, "invalidated the whole prefix (journal overflowed)")
                return
            patterns = dict(entry.patterns)
            for pattern in patterns:
                await tier.delete_matching(pattern)
            self.journal.settle(tier.name, patterns=patterns)
            # Keys on a node still down, or whose failed write may still land, stay
            # journaled for the per-key gate.
            keys = {
                k: g
                for k, g in entry.keys.items()
                if tier.serves((k,)) and not entry.fenced((k,), now)
            }
            batch: dict[str, int] = {}
            for key, generation in keys.items():
                batch[key] = generation
                if len(batch) == _DRAIN_BATCH:
                    await tier.delete(list(batch))
                    self.journal.settle(tier.name, keys=batch)
                    batch = {}
            if batch:
                await tier.delete(list(batch))
                self.journal.settle(tier.name, keys=batch)
        except CacheError as error:
            self._emit("replay-failed", tier.name, f"{error}; the rest stays journaled")
            return
        if keys or patterns:
            self._emit(
                "replay",
                tier.name,
                f"invalidated {len(keys)} keys and {len(patterns)} patterns written elsewhere",
            )

    async def _after_recovery(self, state: TierState) -> None:
        """A node of ``state`` serves again: the tiers below it hold outage-era values.

        They are not trusted again: local tiers are emptied at once, remote
        ones must invalidate their whole prefix before they next serve.
        Without this, a key this process never touched after failback could be
        served from a fallback with a value older than the one Redis has.
        """
        below = self.states[self.states.index(state) + 1 :]
        for lower in below:
            if lower.tier.distributed:
                self.journal.overflow(lower.tier.name)
            else:
                await lower.tier.delete_matching(self._namespace_pattern)

    def _emit(self, kind: str, tier: str, message: str) -> None:
        self.events.emit(Event(self._clock.now(), kind, tier, message))

    def _drain_if_pending(self, state: TierState) -> None:
        if self.journal.pending(state.tier.name):
            self._start_drain(state)

    async def close(self) -> None:
        await self.health.stop()
        tasks = [
            task for s in self.states if (task := s.drain_task) is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
