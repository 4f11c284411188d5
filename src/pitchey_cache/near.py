"""An in-process near cache (L1) for the Redis tiers, kept correct by Redis itself.

Reads of hot keys are answered from process memory. Redis says when a key
changes: every node that serves keys gets a connection of our own (a
:class:`TrackingListener`, a :class:`~pitchey_cache.tiers.link.NodeLink`
switched to RESP3) with ``CLIENT TRACKING ON BCAST PREFIX <prefix>:``, over
which the server pushes an ``invalidate`` message for every key of the
prefix that anyone modifies (or that expires), about a millisecond after the
write on loopback.

Correctness, rule by rule:

- A value is stored only if it was read while every listener was subscribed,
  the first tier of the chain was serving (not Upstash or memory, which send
  no invalidations), and no invalidation of that key, no flush and no failure
  of the first tier happened between sending the read and storing its reply
  (a per-key fill token, plus an epoch that every flush bumps).
- Everything is flushed, and nothing is stored until every listener is
  subscribed again, when: a listener disconnects or misses its PINGs, a
  flush-all (``invalidate`` with no keys) arrives, a probe finds that the set
  of nodes serving keys changed (topology), and on every node change,
  failover or failback of the first tier (the health checker's events).
- Every write of this process (``set``, ``delete``, ``incr``, a loader's
  store...) drops the keys it touches when it ends, however it ends (a pattern
  delete flushes everything): the router tells the near cache. So a read made
  after a write never sees the older value, even before the server's
  invalidation arrives.
- Bounded by entries and bytes (least recently used first out) and by a local
  TTL; an entry never outlives CACHE_NEAR_TTL even if an expiry's
  invalidation were lost.

What a reader in another process can see: a value older than another
process's acknowledged write for as long as the invalidation takes to arrive
(the invalidation lag, measured by ``make bench``), never longer than
CACHE_NEAR_TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import hiredis

from pitchey_cache.clock import Clock
from pitchey_cache.events import Event
from pitchey_cache.resilience.router import FailoverRouter
from pitchey_cache.resilience.state import TierState
from pitchey_cache.snapshot import NearSnapshot
from pitchey_cache.stats import NearCacheStats
from pitchey_cache.tiers.base import TierCondition
from pitchey_cache.tiers.link import LinkError, NodeLink

if TYPE_CHECKING:
    from pitchey_cache.config import Settings

logger = logging.getLogger("pitchey_cache")

# Bookkeeping bytes charged per entry on top of its key and value.
ENTRY_OVERHEAD: Final = 64
# A listener PINGs this often; no answer within LISTENER_DEADLINE_S means it is lost.
LISTENER_PING_S: Final = 1.0
LISTENER_DEADLINE_S: Final = 3.0
# Waits between reconnect attempts of a lost listener: doubling, capped.
RECONNECT_MIN_S: Final = 0.05
RECONNECT_MAX_S: Final = 1.0
# Events of the first tier after which nothing cached locally can be trusted.
FLUSH_EVENTS: Final = frozenset({"failover", "failback", "node-down", "node-up"})
# Serving conditions of the first tier in which every key is read from it: degraded
# means a node failed while every slot's master answers.
_SERVING: Final = frozenset({TierCondition.HEALTHY, TierCondition.DEGRADED})

OpenLink = Callable[[str, float], Awaitable[NodeLink]]


class Reads(Protocol):
    """What the near cache reads through on a local miss: the coalescer, or plain GETs."""

    def get(self, key: str) -> Awaitable[bytes | None]: ...


class NearCache:
    """The L1 in front of :class:`Reads`; see the module docstring."""

    def __init__(
        self,
        reads: Reads,
        *,
        router: FailoverRouter,
        settings: Settings,
        clock: Clock,
        listener_factory: Callable[[str, NearCache], TrackingListener] | None = None,
    ) -> None:
        self._reads = reads
        self._router = router
        self._now = clock.monotonic
        self._prefix = f"{settings.key_prefix}:" if settings.key_prefix else ""
        self._max_entries = settings.near_max_entries
        self._max_bytes = settings.near_max_bytes
        self._ttl = float(settings.near_ttl)
        # key -> (value or None for a miss, bytes charged, monotonic expiry).
        self._entries: OrderedDict[str, tuple[bytes | None, int, float]] = OrderedDict()
        self._bytes = 0
        # key -> the fill token of the reads of it in flight: [how many].
        self._filling: dict[str, list[int]] = {}
        self._epoch = 0
        self._listeners: dict[str, TrackingListener] = {}
        self._listener_factory = listener_factory or self._new_listener
        self._unsubscribe: list[Callable[[], None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.stats = NearCacheStats()
        self._first: TierState = router.states[0]
        # Only a Redis tier first in the chain (one we can open node links to) pushes
        # invalidations: on any other chain, nothing is ever stored.
        self._redis_first = self._first.tier.has_links

    def __repr__(self) -> str:
        state = "filling" if self.filling_allowed() else "not filling"
        return (
            f"<NearCache [{state}, {len(self._entries)} entries, {self._bytes} bytes, "
            f"{len(self._listeners)} listeners]>"
        )

    # -- reads -----------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[2] > self._now():
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry[0]
            self._drop(key)
        self.stats.misses += 1
        if not self.filling_allowed():
            return await self._reads.get(key)
        # One fill token per key, shared by the reads of it in flight together (a
        # counter of them): an invalidation or a write of the key takes it away, and
        # none of those replies is stored; otherwise any of them may be.
        token = self._filling.get(key)
        if token is None:
            token = self._filling[key] = [0]
        token[0] += 1
        epoch = self._epoch
        failures = self._first_tier_failures()
        try:
            data = await self._reads.get(key)
        finally:
            token[0] -= 1
            current = self._filling.get(key) is token
            if current and not token[0]:
                del self._filling[key]
        if (
            current
            and epoch == self._epoch
            and failures == self._first_tier_failures()
            and self.filling_allowed()
        ):
            self._store(key, data)
        else:
            self.stats.refused_fills += 1
        return data

    def filling_allowed(self) -> bool:
        """Whether a reply read now may be stored: every listener subscribed, Redis serving."""
        if not self._redis_first or not self._listeners:
            return False
        if not all(listener.subscribed for listener in self._listeners.values()):
            return False
        # The router also serves keys from the next tier, without a failure, when
        # their node is down (partial) or the tier's journal holds writes made elsewhere.
        first = self._first
        return (
            self._router.active is first
            and first.tier.condition() in _SERVING
            and not self._router.journal.pending(first.tier.name)
        )

    def _first_tier_failures(self) -> int:
        # Any failed call on the first tier may have been served by the next one
        # without a failover: a reply read meanwhile is not stored.
        return sum(figures.failed for figures in self._first.by_operation.values())

    def _store(self, key: str, data: bytes | None) -> None:
        size = len(key) + (len(data) if data is not None else 0) + ENTRY_OVERHEAD
        if size > self._max_bytes:
            return
        self._drop(key)
        self._entries[key] = (data, size, self._now() + self._ttl)
        self._bytes += size
        self.stats.fills += 1
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted[1]
            self.stats.evictions += 1

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    # -- what makes entries stale ------------------------------------------------

    def written(self, keys: Sequence[str], pattern: str | None) -> None:
        """This process wrote ``keys`` (or deleted ``pattern``): drop them, and refuse
        the fills in flight for them."""
        if pattern is not None:
            self.flush("this process deleted a pattern")
        for key in keys:
            self._drop(key)
            self._filling.pop(key, None)

    def invalidate(self, keys: Sequence[str] | None) -> None:
        """The server says ``keys`` changed; None means everything did (a flush)."""
        if keys is None:
            self.flush("the server invalidated every key")
            return
        for key in keys:
            self.stats.invalidations += 1
            self._drop(key)
            self._filling.pop(key, None)

    def flush(self, reason: str) -> None:
        """Drop every entry and refuse every fill in flight."""
        self._epoch += 1
        self._filling.clear()
        if self._entries:
            logger.debug("near cache flushed (%d entries): %s", len(self._entries), reason)
        self._entries.clear()
        self._bytes = 0
        self.stats.flushes += 1

    def _on_event(self, event: Event) -> None:
        if event.kind in FLUSH_EVENTS and event.tier == self._first.tier.name:
            self.flush(f"{event.kind} {event.tier}")

    def _after_probe(self, state: TierState) -> None:
        if state is self._first:
            self._sync_listeners()

    # -- listeners ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen to the first tier's nodes; follow its events and its topology."""
        if not self._redis_first or self._unsubscribe:
            return
        self._unsubscribe = [
            self._router.events.subscribe(self._on_event),
            self._router.health.after_probe(self._after_probe),
            self._router.after_writes(self.written),
        ]
        self._sync_listeners()

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        listeners, self._listeners = self._listeners, {}
        await asyncio.gather(*(listener.close() for listener in listeners.values()), *self._closing)
        self.flush("closed")

    def _sync_listeners(self) -> None:
        """Listen to exactly the nodes that serve keys now; flush when that set changes."""
        wanted = {node.address for node in self._first.tier.key_nodes}
        current = set(self._listeners)
        if wanted == current:
            return
        if current:
            self.flush("the nodes serving keys changed")
        for address in current - wanted:
            listener = self._listeners.pop(address)
            closing = asyncio.create_task(listener.close(), name="pitchey-cache listener close")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        for address in wanted - current:
            listener = self._listener_factory(address, self)
            self._listeners[address] = listener
            listener.start()

    def listener_lost(self, address: str, reason: str) -> None:
        self.flush(f"listener {address} lost: {reason}")

    def _new_listener(self, address: str, near: NearCache) -> TrackingListener:
        return TrackingListener(address, self._first.tier.open_link, near, prefix=self._prefix)

    def snapshot(self) -> NearSnapshot:
        s = self.stats
        return NearSnapshot(
            filling=self.filling_allowed(),
            counters=NearCacheStats(
                s.hits,
                s.misses,
                s.fills,
                s.refused_fills,
                s.invalidations,
                s.flushes,
                s.evictions,
            ),
            entries=len(self._entries),
            bytes=self._bytes,
            max_entries=self._max_entries,
            max_bytes=self._max_bytes,
            listeners={a: listener.subscribed for a, listener in self._listeners.items()},
        )


class TrackingListener:
    """One RESP3 connection to one node, subscribed to invalidations of the prefix.

    A :class:`~pitchey_cache.tiers.link.NodeLink` opened by the tier (its TLS,
    AUTH and error wording), switched to RESP3 with ``HELLO 3``, so that the
    server's ``invalidate`` pushes arrive on it beside the replies; glide 2.6
    does not hand those pushes to Python. A closed connection is noticed at
    once (``NodeLink.lost``), a silent one by an unanswered PING.
    """

    def __init__(self, address: str, open_link: OpenLink, near: NearCache, *, prefix: str) -> None:
        self.address = address
        self._open_link = open_link
        self._near = near
        self._prefix = prefix
        self.subscribed = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "subscribed" if self.subscribed else "not subscribed"
        return f"<TrackingListener {self.address} [{state}]>"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pitchey-cache tracking {self.address}")

    async def close(self) -> None:
        task, self._task = self._task, None
        self.subscribed = False
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            link: NodeLink | None = None
            try:
                link = await self._open_link(self.address, LISTENER_DEADLINE_S)
                await self._subscribe(link)
                delay = RECONNECT_MIN_S
                reason = await self._watch(link)
            except LinkError as exc:
                reason = exc.reason
            finally:
                if link is not None:
                    link.close()
            was_subscribed, self.subscribed = self.subscribed, False
            # One never subscribed let nothing be stored: no flush to count.
            if was_subscribed:
                self._near.listener_lost(self.address, reason)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RECONNECT_MAX_S)

    async def _subscribe(self, link: NodeLink) -> None:
        link.on_push = self._on_push
        async with asyncio.timeout(LISTENER_DEADLINE_S):
            # Without a key prefix, every key of the node is tracked.
            prefix = ("PREFIX", self._prefix) if self._prefix else ()
            for command in (
                ("HELLO", "3"),
                ("CLIENT", "SETNAME", "pitchey-cache-tracking"),
                ("CLIENT", "TRACKING", "ON", "BCAST", *prefix),
            ):
                reply = await link.command(*command)
                if isinstance(reply, hiredis.ReplyError):
                    raise LinkError(f"{' '.join(command[:2])} refused: {reply}")
        self.subscribed = True
        # Nothing read before now was tracked: fills start from a clean slate.
        self._near.flush(f"listener {self.address} subscribed")

    async def _watch(self, link: NodeLink) -> str:
        """PING every LISTENER_PING_S until the link is lost or a PING goes unanswered."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LISTENER_PING_S):
                    return await asyncio.shield(link.lost)
            try:
                async with asyncio.timeout(LISTENER_DEADLINE_S):
                    await link.command("PING")
            except TimeoutError:
                return f"no answer to PING within {LISTENER_DEADLINE_S:g}s"

    def _on_push(self, message: list[object]) -> None:
        if len(message) < 2 or message[0] != b"invalidate":  # noqa: PLR2004 - kind, keys
            return
        keys = message[1]
        if keys is None:
            self._near.invalidate(None)
        elif isinstance(keys, list):
            # Our keys are valid UTF-8: a key that is not cannot be one of ours.
            self._near.invalidate(
                [k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in keys]
            )
