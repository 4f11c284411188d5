"""An in-process near cache (L1) for the Redis tiers, kept correct by Redis itself.

Reads of hot keys are answered from process memory. Redis says when a key
changes: every node that serves keys gets a connection of our own (a
:class:`TrackingListener`) with ``CLIENT TRACKING ON BCAST PREFIX <prefix>:``,
over which the server pushes an ``invalidate`` message for every key of the
prefix that anyone modifies (or that expires), about a millisecond after the
write on loopback.

Correctness, rule by rule:

- A value is stored only if it was read while every listener was subscribed,
  the first tier of the chain was serving (not Upstash or memory, which send
  no invalidations), and no invalidation of that key, no flush and no failure
  of the first tier happened between sending the read and storing its reply
  (a per-key fill token, plus an epoch that every flush bumps).
- Everything is flushed, and nothing is stored until every listener is
  subscribed again, when: a listener disconnects or misses its heartbeat, a
  flush-all (``invalidate`` with no keys) arrives, the set of nodes to listen
  to changes (topology), and on every failover, failback or node change the
  cache reports (``Cache.on_event``).
- This process's own writes drop the keys they touch when they return (and a
  pattern delete flushes everything), so a read made after a write never
  sees the older value, even before the server's invalidation arrives.
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
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from pitchey_cache.clock import Clock
from pitchey_cache.errors import ConfigError
from pitchey_cache.events import Event
from pitchey_cache.resilience.router import FailoverRouter
from pitchey_cache.tiers.base import TierCondition

if TYPE_CHECKING:
    from pitchey_cache.config import Settings

logger = logging.getLogger("pitchey_cache")

# Bookkeeping bytes charged per entry on top of its key and value.
ENTRY_OVERHEAD: Final = 64
# A listener pings this often; silence for three periods means it is lost.
HEARTBEAT_S: Final = 1.0
# How often the set of nodes to listen to is compared with the tier's topology.
TOPOLOGY_CHECK_S: Final = 0.5
# Waits between reconnect attempts of a lost listener: doubling, capped.
RECONNECT_MIN_S: Final = 0.05
RECONNECT_MAX_S: Final = 1.0
# Events after which nothing cached locally can be trusted.
FLUSH_EVENTS: Final = frozenset({"failover", "failback", "node-down", "node-up"})


class Reads(Protocol):
    """What the near cache reads through on a local miss: the coalescer, or plain GETs."""

    async def get(self, key: str) -> bytes | None: ...


@dataclass(slots=True)
class NearCacheStats:
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


@dataclass(slots=True)
class _Entry:
    data: bytes | None
    size: int
    expires_at: float


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
        self._clock = clock
        self._prefix = f"{settings.key_prefix}:" if settings.key_prefix else ""
        self._max_entries = settings.near_max_entries
        self._max_bytes = settings.near_max_bytes
        self._ttl = float(settings.near_ttl)
        self._settings = settings
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._filling: dict[str, object] = {}
        self._epoch = 0
        self._listeners: dict[str, TrackingListener] = {}
        self._listener_factory = listener_factory or self._new_listener
        self._supervisor: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.stats = NearCacheStats()
        _require_redis_py()
        # Only a Redis tier first in the chain pushes invalidations.
        first = router.tiers[0]
        self._redis_first = first.name in ("native-redis", "redis-cluster")

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
            if entry.expires_at > self._clock.monotonic():
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry.data
            self._drop(key)
        self.stats.misses += 1
        if not self.filling_allowed():
            return await self._reads.get(key)
        token = object()
        self._filling[key] = token
        epoch = self._epoch
        failures = self._first_tier_failures()
        try:
            data = await self._reads.get(key)
        finally:
            mine = self._filling.get(key) is token
            if mine:
                del self._filling[key]
        if (
            mine
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
        first = self._router.states[0]
        return (
            self._router.active is first
            # Degraded: a node failed, but every slot's master answers.
            and first.tier.condition() in (TierCondition.HEALTHY, TierCondition.DEGRADED)
            and not self._router.journal.pending(first.tier.name)
        )

    def _first_tier_failures(self) -> int:
        # Any failed call on the first tier may have been served by the next one
        # without a failover: a reply read meanwhile is not stored.
        state = self._router.states[0]
        return sum(figures.failed for figures in state.by_operation.values())

    def _store(self, key: str, data: bytes | None) -> None:
        size = len(key) + (len(data) if data is not None else 0) + ENTRY_OVERHEAD
        if size > self._max_bytes:
            return
        self._drop(key)
        self._entries[key] = _Entry(data, size, self._clock.monotonic() + self._ttl)
        self._bytes += size
        self.stats.fills += 1
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self.stats.evictions += 1

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    # -- what makes entries stale ------------------------------------------------

    def forget(self, keys: Iterable[str]) -> None:
        """This process wrote ``keys``: drop them, and refuse fills in flight for them."""
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

    def on_event(self, event: Event) -> None:
        if event.kind in FLUSH_EVENTS:
            self.flush(f"{event.kind} {event.tier}")

    # -- listeners ---------------------------------------------------------------

    async def start(self) -> None:
        if self._redis_first and self._supervisor is None:
            self._sync_listeners()
            self._supervisor = asyncio.create_task(
                self._watch_topology(), name="pitchey-cache near-cache topology"
            )

    async def close(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        listeners, self._listeners = self._listeners, {}
        for listener in listeners.values():
            await listener.close()
        self.flush("closed")

    async def _watch_topology(self) -> None:
        while True:
            await self._clock.sleep(TOPOLOGY_CHECK_S)
            self._sync_listeners()

    def _addresses(self) -> set[str]:
        return {node.address for node in self._router.tiers[0].key_nodes}

    def _sync_listeners(self) -> None:
        """Listen to exactly the nodes that serve keys now; flush when that set changes."""
        wanted = self._addresses()
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
        return TrackingListener(address, near, self._settings, prefix=self._prefix)

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "enabled": True,
            "filling": self.filling_allowed(),
            "hits": s.hits,
            "misses": s.misses,
            "fills": s.fills,
            "refusedFills": s.refused_fills,
            "invalidations": s.invalidations,
            "flushes": s.flushes,
            "evictions": s.evictions,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "maxEntries": self._max_entries,
            "maxBytes": self._max_bytes,
            "listeners": {a: listener.subscribed for a, listener in self._listeners.items()},
        }


def _require_redis_py() -> None:
    try:
        import redis.asyncio.connection  # noqa: F401, PLC0415 - only the near cache needs it
    except ModuleNotFoundError:
        raise ConfigError(
            "CACHE_NEAR_CACHE",
            "true",
            "needs redis-py for its invalidation listeners: pip install 'pitchey-cache[near]'",
        ) from None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class TrackingListener:
    """One RESP3 connection to one node, subscribed to invalidations of the prefix.

    Built on redis-py's asyncio ``Connection`` with ``protocol=3`` (glide 2.6
    does not hand ``invalidate`` pushes to Python). The push handler is set on
    the connection's parser, reached through its private ``_parser``: that is
    the one place we rely on redis-py internals, and the near cache tests fail
    when it moves.
    """

    def __init__(self, address: str, near: NearCache, settings: Settings, *, prefix: str) -> None:
        self.address = address
        self._near = near
        self._settings = settings
        self._prefix = prefix
        self.subscribed = False
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None
        self.client_id: int | None = None
        self._last_reply = 0.0

    def __repr__(self) -> str:
        state = "subscribed" if self.subscribed else "not subscribed"
        return f"<TrackingListener {self.address} [{state}]>"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pitchey-cache tracking {self.address}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._disconnect()

    def _connect_options(self) -> dict[str, Any]:
        s = self._settings
        host, port = _split_address(self.address)
        if s.cluster_enabled:
            password, username = s.cluster_password, s.cluster_username
        else:
            password, username = s.redis_password, s.redis_username
        options: dict[str, Any] = {
            "host": host,
            "port": port,
            "protocol": 3,
            "username": username,
            "password": password.reveal() if password is not None else None,
            "socket_connect_timeout": s.connect_timeout_ms / 1000,
            "socket_timeout": s.command_timeout_ms / 1000,
            "client_name": "pitchey-cache-tracking",
        }
        if s.tls_enabled:
            options.update(
                ssl_ca_certs=str(s.tls_ca_cert) if s.tls_ca_cert else None,
                ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
                ssl_keyfile=str(s.tls_key) if s.tls_key else None,
                ssl_cert_reqs="none" if s.tls_insecure else "required",
                ssl_check_hostname=not s.tls_insecure,
            )
        return options

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: lost, reconnect
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "closed"
            was_subscribed, self.subscribed = self.subscribed, False
            await self._disconnect()
            # One never subscribed let nothing be stored: no flush to count.
            if was_subscribed:
                self._near.listener_lost(self.address, reason)
                delay = RECONNECT_MIN_S
            await asyncio.sleep(delay)
            delay = min(2 * delay, RECONNECT_MAX_S)

    async def _listen(self) -> None:
        from redis.asyncio.connection import Connection, SSLConnection  # noqa: PLC0415

        options = self._connect_options()
        kind = SSLConnection if "ssl_cert_reqs" in options else Connection
        # Typed loosely: redis-py's parser attribute is typed as its base class.
        connection: Any = kind(**options)
        self._connection = connection
        await connection.connect()
        connection._parser.set_invalidation_push_handler(self._on_push)
        await connection.send_command("CLIENT", "ID")
        self.client_id = int(await connection.read_response())
        await connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
        reply = await connection.read_response()
        if reply not in (b"OK", "OK"):
            raise ConnectionError(f"CLIENT TRACKING answered {reply!r}")
        self.subscribed = True
        # Nothing read before now was tracked: fills start from a clean slate.
        self._near.flush(f"listener {self.address} subscribed")
        heartbeat = asyncio.create_task(self._heartbeat(connection))
        try:
            while True:
                await connection.read_response(timeout=math.inf, push_request=True)
                self._last_reply = asyncio.get_running_loop().time()
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _heartbeat(self, connection: Any) -> None:
        """PING every HEARTBEAT_S; three periods without any reply closes the connection."""
        loop = asyncio.get_running_loop()
        self._last_reply = loop.time()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if loop.time() - self._last_reply > 3 * HEARTBEAT_S:
                self.subscribed = False
                self._near.listener_lost(self.address, "missed heartbeats")
                await connection.disconnect()
                return
            await connection.send_command("PING")

    async def _on_push(self, message: list[Any]) -> list[Any]:
        keys = message[1] if len(message) > 1 else None
        if keys is None:
            self._near.invalidate(None)
        else:
            self._near.invalidate([k.decode() if isinstance(k, bytes) else k for k in keys])
        return message
