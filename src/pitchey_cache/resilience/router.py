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
from dataclasses import dataclass, field
from typing import TypeVar

from pitchey_cache.clock import Clock
from pitchey_cache.errors import CacheError, CommandError, TierUnavailable
from pitchey_cache.events import Event, EventLog
from pitchey_cache.globs import key_matcher
from pitchey_cache.resilience.journal import InvalidationJournal
from pitchey_cache.stats import OperationStats
from pitchey_cache.tiers.base import NodeHealth, Tier, TierCondition

_T = TypeVar("_T")

# Keys deleted per command when a journal is drained.
_DRAIN_BATCH = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """REDIS_MAX_RETRIES extra attempts, REDIS_RETRY_DELAY apart, for retryable failures."""

    max_retries: int
    delay: float


@dataclass(slots=True)
class TierState:
    """The router's view of one tier."""

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


class FailoverRouter:
    """Ordered tiers; the last one (in-memory) is never skipped."""

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
        histograms: bool = True,
    ) -> None:
        if not tiers:
            raise ValueError("a router needs at least one tier")
        self._clock = clock
        self._histograms = histograms
        self._retry = retry
        self._max_failures = max_failures
        self._failover_timeout = failover_timeout
        self._probe_timeout = probe_timeout
        self._namespace_pattern = namespace_pattern
        self.journal = journal
        self.events = events
        self.states = [TierState(tier) for tier in tiers]
        for state in self.states:
            others = [s.tier for s in self.states if s is not state]
            state.remote_others = tuple(t.name for t in others if t.distributed)
            state.local_others = tuple(t for t in others if not t.distributed)
        self._last = self.states[-1]
        self.failovers = 0
        self.failbacks = 0

    def __repr__(self) -> str:
        chain = " -> ".join(f"{s.tier.name} ({s.tier.condition()})" for s in self.states)
        return f"<FailoverRouter [{chain}] active={self.active.tier.name}>"

    @property
    def tiers(self) -> list[Tier]:
        return [s.tier for s in self.states]

    @property
    def active(self) -> TierState:
        """The first tier that can serve some keys: where calls go first."""
        for state in self.states:
            if state.tier.condition() is not TierCondition.DOWN:
                return state
        return self._last

    async def execute(
        self,
        operation: str,
        call: Callable[[Tier], Awaitable[_T]],
        *,
        keys: Sequence[str] = (),
        writes: bool = False,
        pattern: str | None = None,
        retry_safe: bool = True,
    ) -> _T:
        """Run ``call`` on the first tier that serves it.

        ``operation`` names the call in the per-operation figures (``get``);
        ``keys`` are the full keys the call touches; ``writes`` says whether it
        changes them; ``pattern`` is the glob a pattern delete removes;
        ``retry_safe`` is False for calls that must not run twice (INCR).
        """
        for state in self.states:
            if state is not self._last:
                if state.suspect and not state.tier.serves(keys):
                    self._probe_if_due(state)
                    continue
                if self.journal.pending(state.tier.name) and self._awaits_drain(
                    state, keys, pattern
                ):
                    continue
            try:
                result = await self._attempt(
                    state, operation, call, keys, writes, pattern, retry_safe
                )
            except TierUnavailable:
                continue
            if writes:
                await self._invalidate_elsewhere(state, keys, pattern)
            return result
        raise AssertionError("unreachable: the last tier never raises TierUnavailable")

    async def _attempt(  # noqa: PLR0917 - the hot path; execute's arguments, passed on
        self,
        state: TierState,
        operation: str,
        call: Callable[[Tier], Awaitable[_T]],
        keys: Sequence[str],
        writes: bool,
        pattern: str | None,
        retry_safe: bool,
    ) -> _T:
        tier = state.tier
        attempts = 1 + (self._retry.max_retries if retry_safe else 0)
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                if keys and self.journal.pending(tier.name):
                    await self._invalidate_pending(state, keys)
                result = await call(tier)
            except Exception as exc:
                error = exc if isinstance(exc, CacheError) else tier.translate(exc)
                elapsed = time.perf_counter() - started
                if isinstance(error, CommandError):
                    self._record(state, operation, True, elapsed)
                    if error is exc:
                        raise
                    raise error from exc
                if not isinstance(error, TierUnavailable):
                    raise
                self._record(state, operation, False, elapsed)
                if writes:
                    # The write may or may not have happened on this tier.
                    self.journal.record(tier.name, keys, pattern)
                if state is not self._last:
                    if error.node_fault:
                        self._charge(state, keys, error.reason)
                    else:
                        # A slot is moving: learn which, so timeouts on it aren't charged.
                        self._schedule_probe(state, 0.0)
                        self._probe_if_due(state)
                if error.retryable and attempt + 1 < attempts and tier.serves(keys):
                    await self._clock.sleep(self._retry.delay)
                    continue
                raise error from None
            self._record(state, operation, True, time.perf_counter() - started)
            if state.suspect:
                await self._credit(state, keys)
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    def _record(self, state: TierState, operation: str, ok: bool, seconds: float) -> None:
        figures = state.by_operation.get(operation)
        if figures is None:
            figures = OperationStats.with_histogram() if self._histograms else OperationStats()
            state.by_operation[operation] = figures
        figures.record(ok, seconds)

    # -- node health from calls -----------------------------------------------

    @staticmethod
    def _owners(tier: Tier, keys: Sequence[str]) -> list[NodeHealth]:
        """The nodes serving ``keys``; a keyless call on a one-node tier is that node's."""
        if not keys:
            return list(tier.nodes) if len(tier.nodes) == 1 else []
        owners: dict[int, NodeHealth] = {}
        for key in keys:
            node = tier.node_for(key)
            if node is not None:
                owners[id(node)] = node
        return list(owners.values())

    async def _credit(self, state: TierState, keys: Sequence[str]) -> None:
        """A call succeeded: every node that served it starts its failure count over."""
        state.unattributed_failures = 0
        for node in self._owners(state.tier, keys):
            if node.failure_count:
                was_healthy = node.healthy
                node.record_success()
                if not was_healthy:
                    self._emit("node-up", state.tier.name, f"{node.address} answered a call")
                    await self._after_recovery(state)
                    self._note_change(state)
        self._reassess(state)

    @staticmethod
    def _reassess(state: TierState) -> None:
        state.suspect = any(n.failure_count or not n.healthy for n in state.tier.key_nodes)

    def _charge(self, state: TierState, keys: Sequence[str], reason: str) -> None:
        """Charge a failed call to the node serving its keys, when there is one such node."""
        tier = state.tier
        state.suspect = True
        owners = self._owners(tier, keys)
        if len(owners) == 1:
            node = owners[0]
            was_healthy = node.healthy
            node.record_failure(reason, self._max_failures)
            if was_healthy and not node.healthy:
                self._emit(
                    "node-down",
                    tier.name,
                    f"{node.address} after {node.failure_count} failures: {reason}",
                )
                self._schedule_probe(state, self._failover_timeout)
                self._note_change(state)
            return
        # Several nodes (or none known) were involved: probe to find out which.
        state.unattributed_failures += 1
        if state.unattributed_failures >= self._max_failures:
            state.unattributed_failures = 0
            self._schedule_probe(state, 0.0)
            self._probe_if_due(state)

    def _note_change(self, state: TierState) -> None:
        """Tell failovers and failbacks, when a tier stops or starts serving."""
        reachable = state.tier.condition() is not TierCondition.DOWN
        if reachable == state.reachable:
            return
        state.reachable = reachable
        if reachable:
            self.failbacks += 1
            self._emit(
                "failback", state.tier.name, f"serving again; active tier {self.active.tier.name}"
            )
        else:
            self.failovers += 1
            self._emit(
                "failover", state.tier.name, f"bypassed; serving from {self.active.tier.name}"
            )

    def _emit(self, kind: str, tier: str, message: str) -> None:
        self.events.emit(Event(self._clock.now(), kind, tier, message))

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
        try:
            if entry.overflowed:
                await tier.delete_matching(self._namespace_pattern)
                self.journal.settle_overflow(tier.name)
                self._emit("replay", tier.name, "invalidated the whole prefix (journal overflowed)")
                return
            patterns = dict(entry.patterns)
            for pattern in patterns:
                await tier.delete_matching(pattern)
            self.journal.settle(tier.name, patterns=patterns)
            # Keys on a node still down stay journaled for the per-key gate.
            keys = {k: g for k, g in entry.keys.items() if tier.serves((k,))}
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
        except Exception as exc:  # noqa: BLE001 - what is left stays journaled
            error = exc if isinstance(exc, CacheError) else tier.translate(exc)
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

    # -- probes: the health checker, and nodes whose probe is due --------------

    def _schedule_probe(self, state: TierState, delay: float) -> None:
        due = self._clock.monotonic() + delay
        if state.next_probe_at is None or due < state.next_probe_at:
            state.next_probe_at = due

    def _probe_if_due(self, state: TierState) -> None:
        if state.next_probe_at is not None and self._clock.monotonic() >= state.next_probe_at:
            self._start_probe(state)

    def _start_probe(self, state: TierState) -> asyncio.Task[None]:
        """Start a probe of ``state``'s tier unless one is running; return the running one."""
        if state.probe_task is None or state.probe_task.done():
            state.probe_task = asyncio.create_task(
                self._probe(state), name=f"pitchey-cache probe {state.tier.name}"
            )
        return state.probe_task

    async def probe(self, state: TierState) -> None:
        """Ping every node of a tier and record what each answered.

        One probe per tier at a time: a caller that arrives while one runs
        waits for that one. A node that answers is healthy again, and once a
        tier serves again its journal is drained in the background.
        """
        await asyncio.shield(self._start_probe(state))

    async def _probe(self, state: TierState) -> None:
        tier = state.tier
        state.next_probe_at = None
        before = tier.condition()
        answers: dict[str, str | None] = {}
        failure: str | None = None
        try:
            async with asyncio.timeout(self._probe_timeout):
                answers = dict(await tier.ping())
        except TimeoutError:
            failure = f"probe timed out after {self._probe_timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - a failed probe is the answer, whatever failed
            error = exc if isinstance(exc, CacheError) else tier.translate(exc)
            failure = getattr(error, "reason", str(error))
        now = self._clock.now()
        recovered = False
        for node in tier.nodes:
            was_healthy = node.healthy
            node.record_probe(now, answers.get(node.address, failure))
            if was_healthy != node.healthy:
                recovered = recovered or node.healthy
                kind = "node-up" if node.healthy else "node-down"
                self._emit(kind, tier.name, f"{node.address}: {node.last_error or 'answered'}")
        state.unattributed_failures = 0
        self._reassess(state)
        # Keys come back to this tier when a node answers again, and also when a
        # promoted replica takes over the slots of a node still down.
        unserved = (TierCondition.PARTIAL, TierCondition.DOWN)
        if recovered or (before in unserved and tier.condition() not in unserved):
            await self._after_recovery(state)
        self._note_change(state)
        if any(not node.healthy for node in tier.nodes):
            self._schedule_probe(state, self._failover_timeout)
        if state.reachable and self.journal.pending(tier.name):
            self._start_drain(state)

    async def close(self) -> None:
        tasks = [
            task
            for s in self.states
            for task in (s.probe_task, s.drain_task)
            if task is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
