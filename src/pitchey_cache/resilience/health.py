"""Which nodes can serve: from calls, from heartbeats and from probes.

The :class:`HealthChecker` owns each node's state. Three things move it:

- **Calls.** A failed call is charged to the node that owns its keys; after
  REDIS_MAX_FAILURES consecutive failures the node is down. A call that
  succeeds makes its nodes healthy again.
- **Heartbeats** (:mod:`pitchey_cache.resilience.heartbeat`). A PING (CLUSTER
  INFO on a cluster node, which must say ``cluster_state:ok``) every
  REDIS_HEARTBEAT_INTERVAL on a connection of its own to every Redis node. A
  refused or reset connection, or a PING unanswered for
  REDIS_HEARTBEAT_TIMEOUT, marks the node down at once, and the calls
  waiting on it are told to give up and are served by the next tier. After
  :data:`RECOVERY_ANSWERS` answers in a row, a probe confirms the node
  through the driver and it takes its keys back.
- **Probes.** The deep check: the topology (CLUSTER NODES) and a question to
  every node through the driver (PING; CLUSTER INFO of each cluster master). Every REDIS_HEALTH_CHECK_INTERVAL,
  REDIS_FAILOVER_TIMEOUT after a node went down (and after each failed probe),
  and when heartbeats say a node is back.

The router asks it to charge and credit calls, and is told through two
callbacks when a tier's nodes recover (so fallbacks can be forgotten) and
when a tier serves again (so its journal is drained).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from pitchey_cache.clock import Clock
from pitchey_cache.errors import CacheError
from pitchey_cache.events import Event, EventLog
from pitchey_cache.resilience.heartbeat import Heartbeat
from pitchey_cache.resilience.state import TierState
from pitchey_cache.tiers.base import NodeHealth, Tier, TierCondition

logger = logging.getLogger("pitchey_cache")

# Heartbeats a node must answer in a row, after it was lost, before a probe may
# give it its keys back: a flapping node does not bounce traffic at every answer.
RECOVERY_ANSWERS = 3
# While some slots of a cluster have no healthy master, the topology is read this
# often (seconds): a replica promoted in their place takes them back at once.
PROMOTION_WATCH = 0.5


class HealthChecker:
    """The per-node health state machine of every tier, and the probes that feed it."""

    def __init__(
        self,
        states: Sequence[TierState],
        *,
        max_failures: int,
        failover_timeout: float,
        probe_timeout: float,
        interval: float,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        clock: Clock,
        events: EventLog,
        recovered: Callable[[TierState], Awaitable[None]],
        serving: Callable[[TierState], None],
    ) -> None:
        self.states = states
        self._max_failures = max_failures
        self._failover_timeout = failover_timeout
        self._probe_timeout = probe_timeout
        self._interval = interval
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self.events = events
        self._recovered = recovered
        self._serving = serving
        self._last = states[-1]
        self._task: asyncio.Task[None] | None = None
        self._heartbeats: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._probe_watchers: list[Callable[[TierState], None]] = []
        self.rounds = 0
        self.failovers = 0
        self.failbacks = 0

    def __repr__(self) -> str:
        running = self._task is not None and not self._task.done()
        return (
            f"<HealthChecker [{'running' if running else 'stopped'}, {self.rounds} rounds, "
            f"{len(self._heartbeats)} heartbeats]>"
        )

    @property
    def active(self) -> TierState:
        """The first tier that can serve some keys: where calls go first."""
        for state in self.states:
            if state.tier.condition() is not TierCondition.DOWN:
                return state
        return self._last

    def after_probe(self, callback: Callable[[TierState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` after every probe of a tier: its topology (the nodes
        serving keys) and its nodes' health may have changed. Returns the unsubscribe."""
        self._probe_watchers.append(callback)
        return lambda: self._probe_watchers.remove(callback)

    # -- the periodic round and heartbeats ---------------------------------------

    async def check_all(self) -> None:
        """One round: probe every tier concurrently."""
        await asyncio.gather(*(self.probe(s) for s in self.states))
        self.rounds += 1

    def start(self) -> None:
        """Start the periodic round, and heartbeats to every node of the Redis tiers."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pitchey-cache health checker")
        for state in self.states:
            self._sync_heartbeats(state)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._heartbeats.values()) if t is not None]
        tasks += [
            task for s in self.states if (task := s.probe_task) is not None and not task.done()
        ]
        self._task = None
        self._heartbeats = {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.check_all()
            except Exception:  # a bug here must not stop health checks for good
                logger.exception("health check round failed")

    def _sync_heartbeats(self, state: TierState) -> None:
        """One heartbeat per node the tier knows now; a node that left the topology loses its."""
        tier = state.tier
        if self._task is None or self._heartbeat_interval <= 0 or not tier.has_links:
            return
        wanted = {(tier.name, node.address) for node in tier.nodes}
        for key in list(self._heartbeats):
            if key[0] == tier.name and key not in wanted:
                self._heartbeats.pop(key).cancel()
        for key in wanted:
            if key not in self._heartbeats:
                self._heartbeats[key] = self._start_heartbeat(state, key[1])

    def _start_heartbeat(self, state: TierState, address: str) -> asyncio.Task[None]:
        def lost(reason: str) -> None:
            self.heartbeat_lost(state, address, reason)

        def answered() -> None:
            self.heartbeat_answered(state, address)

        heartbeat = Heartbeat(
            address,
            state.tier.open_link,
            interval=self._heartbeat_interval,
            timeout=self._heartbeat_timeout,
            clock=self._clock,
            lost=lost,
            answered=answered,
        )
        return asyncio.create_task(heartbeat.run(), name=f"pitchey-cache heartbeat {address}")

    @staticmethod
    def _node(state: TierState, address: str) -> NodeHealth | None:
        return next((n for n in state.tier.nodes if n.address == address), None)

    def heartbeat_lost(self, state: TierState, address: str, reason: str) -> None:
        """A heartbeat found ``address`` refused, reset or silent: down now, calls re-routed."""
        node = self._node(state, address)
        if node is None:
            return
        node.heartbeat_answers = 0
        node.heartbeat_error = reason
        node.failure_count += 1
        node.last_error = reason
        node.last_health_check = self._clock.now()
        # Calls that reached the node before it was marked down still wait on it.
        aborted = state.abort_calls_on(node, reason)
        if not node.healthy:
            return
        node.healthy = False
        state.suspect = True
        detail = f"; {aborted} calls in flight re-routed" if aborted else ""
        self._emit("node-down", state.tier.name, f"{address} (heartbeat): {reason}{detail}")
        self._schedule_probe(state, self._reprobe_delay(state))
        self._note_change(state)

    def heartbeat_answered(self, state: TierState, address: str) -> None:
        """A heartbeat got PONG; a lost node that keeps answering is confirmed by a probe."""
        node = self._node(state, address)
        if node is None:
            return
        node.heartbeat_error = None
        node.heartbeat_answers += 1
        if not node.healthy and node.heartbeat_answers >= RECOVERY_ANSWERS:
            # Another RECOVERY_ANSWERS before the next probe, should this one fail.
            node.heartbeat_answers = 0
            self._start_probe(state)

    # -- node health from calls -----------------------------------------------

    @staticmethod
    def owners(tier: Tier, keys: Sequence[str]) -> list[NodeHealth]:
        """The nodes serving ``keys``; a keyless call on a one-node tier is that node's."""
        if not keys:
            return list(tier.nodes) if len(tier.nodes) == 1 else []
        owners: dict[int, NodeHealth] = {}
        for key in keys:
            node = tier.node_for(key)
            if node is not None:
                owners[id(node)] = node
        return list(owners.values())

    async def credit(self, state: TierState, keys: Sequence[str]) -> None:
        """A call succeeded: every node that served it starts its failure count over."""
        state.unattributed_failures = 0
        for node in self.owners(state.tier, keys):
            if node.failure_count:
                was_healthy = node.healthy
                node.record_success()
                if not was_healthy:
                    self._emit("node-up", state.tier.name, f"{node.address} answered a call")
                    await self._recovered(state)
                    self._note_change(state)
        self._reassess(state)

    @staticmethod
    def _reassess(state: TierState) -> None:
        state.suspect = any(n.failure_count or not n.healthy for n in state.tier.key_nodes)

    def served_elsewhere(self, state: TierState, keys: Sequence[str]) -> None:
        """A call on ``keys`` skipped or failed on this tier: the next one served it."""
        for node in self.owners(state.tier, keys):
            node.served_elsewhere += 1

    def charge(self, state: TierState, keys: Sequence[str], reason: str) -> None:
        """Charge a failed call to the node serving its keys, when there is one such node."""
        tier = state.tier
        state.suspect = True
        owners = self.owners(tier, keys)
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
                # The calls still waiting on it would each wait for their own timeout.
                if tier.has_links:
                    state.abort_calls_on(node, reason)
                self._schedule_probe(state, self._failover_timeout)
                self._note_change(state)
            return
        # Several nodes (or none known) were involved: probe to find out which.
        state.unattributed_failures += 1
        if state.unattributed_failures >= self._max_failures:
            state.unattributed_failures = 0
            self.probe_soon(state)

    def probe_soon(self, state: TierState) -> None:
        """Probe now, in the background (a slot may be moving: learn where)."""
        self._schedule_probe(state, 0.0)
        self.probe_if_due(state)

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

    # -- probes ------------------------------------------------------------------

    def _reprobe_delay(self, state: TierState) -> float:
        """When to probe again a tier with a node down: soon while slots are unserved."""
        if state.tier.condition() is TierCondition.PARTIAL:
            return min(self._failover_timeout, PROMOTION_WATCH)
        return self._failover_timeout

    def _schedule_probe(self, state: TierState, delay: float) -> None:
        due = self._clock.monotonic() + delay
        if state.next_probe_at is None or due < state.next_probe_at:
            state.next_probe_at = due

    def probe_if_due(self, state: TierState) -> None:
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
        # A node whose heartbeat is failing right now is not asked again through the
        # driver: that would cost the whole command timeout on a frozen node.
        silent = {n.address: n.heartbeat_error for n in tier.nodes if n.heartbeat_error}
        answers: dict[str, str | None] = {}
        failure: str | None = None
        try:
            async with asyncio.timeout(self._probe_timeout):
                answers = dict(await tier.ping(skip=frozenset(silent)))
        except TimeoutError:
            failure = f"probe timed out after {self._probe_timeout:g}s"
        except CacheError as error:
            failure = getattr(error, "reason", str(error))
        except Exception as exc:  # noqa: BLE001 - a failed probe is the answer, whatever failed
            failure = f"probe failed ({type(exc).__name__})"
        # And a heartbeat that failed while the probe ran knows better than its answer.
        answers.update(silent)
        answers.update({n.address: n.heartbeat_error for n in tier.nodes if n.heartbeat_error})
        now = self._clock.now()
        recovered = False
        for node in tier.nodes:
            was_healthy = node.healthy
            node.record_probe(now, answers.get(node.address, failure))
            if was_healthy != node.healthy:
                recovered = recovered or node.healthy
                kind = "node-up" if node.healthy else "node-down"
                self._emit(kind, tier.name, f"{node.address}: {node.last_error or 'answered'}")
                if not node.healthy and tier.has_links:
                    state.abort_calls_on(node, node.last_error or "probe failed")
        state.unattributed_failures = 0
        self._reassess(state)
        # Keys come back to this tier when a node answers again, and also when a
        # promoted replica takes over the slots of a node still down.
        unserved = (TierCondition.PARTIAL, TierCondition.DOWN)
        if recovered or (before in unserved and tier.condition() not in unserved):
            await self._recovered(state)
        self._note_change(state)
        if any(not node.healthy for node in tier.nodes):
            self._schedule_probe(state, self._reprobe_delay(state))
        self._sync_heartbeats(state)
        for watcher in list(self._probe_watchers):
            watcher(state)
        if state.reachable:
            self._serving(state)
