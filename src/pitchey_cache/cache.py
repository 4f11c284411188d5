"""The public facade: prefix, TTL, serialization and limits, over the router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from pitchey_cache.clock import Clock, SystemClock, iso
from pitchey_cache.coalescer import CoalescerStats, DirectReads, ReadCoalescer
from pitchey_cache.config import Settings
from pitchey_cache.errors import CacheError, CommandError, InvalidKeyError, ValueTooLargeError
from pitchey_cache.events import EventCallback, EventLog
from pitchey_cache.globs import escape_glob
from pitchey_cache.metrics import CacheMetrics
from pitchey_cache.near import NearCache, Reads
from pitchey_cache.resilience.health import HealthChecker
from pitchey_cache.resilience.journal import InvalidationJournal
from pitchey_cache.resilience.router import FailoverRouter, RetryPolicy, TierState
from pitchey_cache.serialization import Undecodable, decode, encode
from pitchey_cache.stats import CacheStats, OperationStats, percent
from pitchey_cache.tiers import MemoryTier, Tier, build_chain
from pitchey_cache.tiers.base import NodeHealth, TierCondition

logger = logging.getLogger("pitchey_cache")

_T = TypeVar("_T")
_MISSING: Final[Any] = object()
# Upstash's limit, the smallest of the backends', and far beyond any sane cache key.
MAX_KEY_BYTES: Final = 32 * 1024 - 256


class Cache:
    """A tiered cache with runtime failover; use it as ``async with Cache.from_env() as cache``.

    Every call is served by the first available tier of the chain the
    settings produce (see :meth:`Settings.tier_chain`). A backend failure
    never raises into the caller: it is counted and the next tier serves the
    call. Values are JSON values or bytes; keys get ``REDIS_KEY_PREFIX:``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tiers: Sequence[Tier] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._clock = clock or SystemClock()
        chain = list(tiers) if tiers is not None else build_chain(self.settings, self._clock)
        if not chain or not isinstance(chain[-1], MemoryTier):
            raise CacheError("the tier chain must end with the in-memory tier")
        self._memory = chain[-1]
        s = self.settings
        self._prefix = f"{s.key_prefix}:" if s.key_prefix else ""
        self.events = EventLog(json_lines=s.log_format == "json")
        self._router = FailoverRouter(
            chain,
            max_failures=s.max_failures,
            failover_timeout=s.failover_timeout_ms / 1000,
            retry=RetryPolicy(max_retries=s.max_retries, delay=s.retry_delay_ms / 1000),
            journal=InvalidationJournal(s.journal_max_keys),
            namespace_pattern=escape_glob(self._prefix) + "*",
            probe_timeout=(s.connect_timeout_ms + 2 * s.command_timeout_ms) / 1000,
            clock=self._clock,
            events=self.events,
            histograms=s.metrics_enabled,
        )
        # Reads go near cache (CACHE_NEAR_CACHE) -> coalescer (CACHE_COALESCE) -> router.
        self._coalescer = ReadCoalescer(self._router) if s.coalesce else None
        reads: Reads = self._coalescer or DirectReads(self._router)
        self._near = (
            NearCache(reads, router=self._router, settings=s, clock=self._clock)
            if s.near_cache
            else None
        )
        self._reads: Reads = self._near or reads
        self._health = HealthChecker(
            self._router,
            interval=s.health_check_interval_ms / 1000,
            clock=self._clock,
        )
        self.counters = CacheStats()
        self.metrics = CacheMetrics(
            router=self._router,
            counters=self.counters,
            memory=self._memory,
            events=self.events,
            status=self.status,
            near=lambda: self._near.snapshot() if self._near is not None else None,
        )
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._near_unsubscribe: Callable[[], None] = lambda: None
        self._started_at: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Cache:
        return cls(Settings.from_env(environ))

    def __repr__(self) -> str:
        state = "started" if self.started else "stopped"
        chain = " -> ".join(t.name for t in self._router.tiers)
        return f"<Cache [{state}, {chain}, active={self.active_tier}]>"

    # -- lifecycle -----------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started_at is not None

    async def start(self) -> None:
        """Create clients, probe every tier once, start the health checker."""
        if self.started:
            return
        for tier in self._router.tiers:
            await tier.start()
        await self._health.check_all()
        self._started_at = self._clock.monotonic()
        self._health.start()
        if self._near is not None:
            self._near_unsubscribe = self.events.subscribe(self._near.on_event)
            await self._near.start()
        active = self._router.active.tier
        if active is not self._router.tiers[0]:
            logger.warning(
                "%s is unreachable; serving from %s",
                self._router.tiers[0].describe(),
                active.describe(),
            )
        else:
            logger.info("serving from %s", active.describe())

    async def close(self) -> None:
        if not self.started:
            return
        self._started_at = None
        await self._health.stop()
        if self._near is not None:
            self._near_unsubscribe()
            await self._near.close()
        if self._coalescer is not None:
            await self._coalescer.close()
        await self._router.close()
        for tier in self._router.tiers:
            await tier.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def on_event(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` on every node or tier change, failover, failback and
        journal replay; returns a function that unsubscribes. Callbacks run inline and
        must be quick; one that raises is logged and ignored."""
        return self.events.subscribe(callback)

    @property
    def active_tier(self) -> str:
        """The tier the next call goes to: ``redis-cluster``, ``native-redis``, ..."""
        return self._router.active.tier.name

    # -- keys and values -----------------------------------------------------

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"keys are str, got {type(key).__name__}")
        try:
            size = len(key.encode())
        except UnicodeEncodeError:
            raise InvalidKeyError("a key must be encodable as UTF-8 (no lone surrogates)") from None
        if size > MAX_KEY_BYTES:
            raise InvalidKeyError(f"a key is at most {MAX_KEY_BYTES} bytes in UTF-8, got {size}")
        if not self.started:
            raise CacheError(
                "the cache is not started: use `async with cache:` or `await cache.start()`"
            )
        return self._prefix + key

    def _encode(self, key: str, value: Any) -> bytes:
        data = encode(value)
        if len(data) > self.settings.max_value_bytes:
            raise ValueTooLargeError(key, len(data), self.settings.max_value_bytes)
        return data

    def _ttl(self, ttl: int | None) -> int:
        if ttl is None:
            return self.settings.cache_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise CacheError(f"ttl must be a whole number of seconds >= 1, got {ttl!r}")
        return ttl

    def _decode(self, data: bytes | None) -> Any:
        if data is None:
            self.counters.misses += 1
            return _MISSING
        try:
            value = decode(data)
        except Undecodable:
            # Planted or foreign data: a miss, counted, never an exception.
            self.counters.undecodable += 1
            self.counters.misses += 1
            return _MISSING
        self.counters.hits += 1
        return value

    # -- the API ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored at ``key``, or ``default`` on a miss."""
        full = self._key(key)
        try:
            data = await self._reads.get(full)
        except CommandError:
            # Someone else stored a list or hash here: for a read, that is a miss.
            self.counters.undecodable += 1
            data = None
        value = self._decode(data)
        return default if value is _MISSING else value

    async def set(
        self, key: str, value: Any, ttl: int | None = None, *, only_if_absent: bool = False
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (default CACHE_TTL).

        With ``only_if_absent``, store only when the key is missing and say
        whether it was stored.
        """
        full = self._key(key)
        data = self._encode(key, value)
        seconds = self._ttl(ttl)
        stored = await self._write(
            "set",
            lambda t: t.set(full, data, seconds, only_if_absent),
            keys=(full,),
            writes=True,
            retry_safe=not only_if_absent,
        )
        self.counters.sets += 1
        return stored

    async def delete(self, *keys: str) -> int:
        """Delete keys; the number that existed."""
        if not keys:
            return 0
        full = [self._key(k) for k in keys]
        removed = await self._write("delete", lambda t: t.delete(full), keys=full, writes=True)
        self.counters.deletes += removed
        return removed

    async def exists(self, key: str) -> bool:
        full = self._key(key)
        return bool(await self._router.execute("exists", lambda t: t.exists([full]), keys=(full,)))

    async def expire(self, key: str, ttl: int) -> bool:
        """Set a new TTL on an existing key; False when the key is missing."""
        full = self._key(key)
        seconds = self._ttl(ttl)
        return await self._write(
            "expire", lambda t: t.expire(full, seconds), keys=(full,), writes=True
        )

    async def ttl(self, key: str) -> int:
        """Seconds left; -1 when the key has no expiry; -2 when it is missing."""
        full = self._key(key)
        return await self._router.execute("ttl", lambda t: t.ttl(full), keys=(full,))

    async def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` atomically and return the new value (a missing key counts from 0).

        Never retried on the same tier: a timed-out INCR may have run.
        """
        full = self._key(key)
        return await self._write(
            "incr", lambda t: t.incr(full, amount), keys=(full,), writes=True, retry_safe=False
        )

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The keys that are present, with their values (a stored None is present)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        full = [self._key(k) for k in wanted]
        found = await self._router.execute("get_many", lambda t: t.get_many(full), keys=full)
        out: dict[str, Any] = {}
        for key, data in zip(wanted, found, strict=True):
            value = self._decode(data)
            if value is not _MISSING:
                out[key] = value
        return out

    async def set_many(self, items: Mapping[str, Any], ttl: int | None = None) -> None:
        """Store every item for ``ttl`` seconds (default CACHE_TTL)."""
        if not items:
            return
        encoded = {self._key(k): self._encode(k, v) for k, v in items.items()}
        seconds = self._ttl(ttl)
        full = list(encoded)
        await self._write(
            "set_many", lambda t: t.set_many(encoded, seconds), keys=full, writes=True
        )
        self.counters.sets += len(encoded)

    async def delete_pattern(self, pattern: str) -> int:
        """Delete keys matching a Redis glob, within the prefix (SCAN, never KEYS)."""
        if not isinstance(pattern, str) or not pattern:
            raise InvalidKeyError("pattern must be a non-empty str")
        try:
            pattern.encode()
        except UnicodeEncodeError:
            raise InvalidKeyError("a pattern must be encodable as UTF-8") from None
        if not self.started:
            raise CacheError("the cache is not started: use `async with cache:`")
        full = escape_glob(self._prefix) + pattern
        removed = await self._write(
            "delete_pattern", lambda t: t.delete_matching(full), writes=True, pattern=full
        )
        self.counters.deletes += removed
        return removed

    async def _write(
        self,
        operation: str,
        call: Callable[[Tier], Awaitable[_T]],
        *,
        keys: Sequence[str] = (),
        writes: bool = True,
        pattern: str | None = None,
        retry_safe: bool = True,
    ) -> _T:
        """A write through the router; the near cache forgets what it touched once it returns."""
        try:
            return await self._router.execute(
                operation, call, keys=keys, writes=writes, pattern=pattern, retry_safe=retry_safe
            )
        finally:
            if self._near is not None:
                if pattern is not None:
                    self._near.flush("this process deleted a pattern")
                else:
                    self._near.forget(keys)

    async def get_or_set(
        self, key: str, loader: Callable[[], Awaitable[Any]], ttl: int | None = None
    ) -> Any:
        """The cached value, or ``await loader()`` stored for ``ttl`` seconds.

        Concurrent misses on one key in this process share one loader call.
        """
        value = await self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._load(key, loader, ttl))
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _load(self, key: str, loader: Callable[[], Awaitable[Any]], ttl: int | None) -> Any:
        value = await loader()
        await self.set(key, value, ttl)
        return value

    # -- the endpoint bodies ----------------------------------------------------

    def status(self) -> str:
        """``healthy``: the first tier of the chain serves and all its nodes are healthy.
        ``degraded``: serving, but from a fallback tier or with a failed node.
        ``unhealthy``: the cache is not started.
        """
        if not self.started:
            return "unhealthy"
        primary = self._router.states[0]
        if self._router.active is primary and primary.tier.condition() is TierCondition.HEALTHY:
            return "healthy"
        return "degraded"

    def _uptime_ms(self) -> int:
        if self._started_at is None:
            return 0
        return round((self._clock.monotonic() - self._started_at) * 1000)

    def _tier_block(self, state: TierState, *, detailed: bool = False) -> dict[str, Any]:
        """The guide's per-tier block; ``detailed`` adds each node's role, slots and
        last error, and the exact total response time, for the admin endpoints."""
        tier = state.tier
        ops = OperationStats.combined(state.by_operation.values())
        pool = tier.connection_pool()
        nodes = list(tier.nodes)
        healthy = sum(1 for n in nodes if n.healthy)
        performance: dict[str, Any] = {
            "averageResponseTime": None if ops.average_ms is None else round(ops.average_ms, 3),
            "uptime": self._uptime_ms(),
        }
        if detailed:
            # Exact, unlike average x total: what a poller diffs for recent latency.
            performance["totalResponseTime"] = round(ops.total_seconds * 1000, 3)
        return {
            "enabled": tier.name == "redis-cluster",
            "totalNodes": len(nodes),
            "healthyNodes": healthy,
            "failedNodes": len(nodes) - healthy,
            "operations": {
                "total": ops.total,
                "successful": ops.successful,
                "failed": ops.failed,
                "successRate": percent(ops.success_rate),
            },
            "performance": performance,
            "connectionPool": {
                "totalConnections": pool.total,
                "activeConnections": pool.active,
                "idleConnections": pool.idle,
            },
            "nodes": [self._node_body(tier, n, detailed=detailed) for n in nodes],
        }

    @staticmethod
    def _node_body(tier: Tier, node: NodeHealth, *, detailed: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "address": node.address,
            "healthy": node.healthy,
            "failureCount": node.failure_count,
            "lastHealthCheck": iso(node.last_health_check),
            "poolConnections": tier.pool_connections(node),
        }
        if detailed:
            body["role"] = node.role
            body["slots"] = [list(r) for r in node.slots]
            body["lastError"] = node.last_error
        return body

    async def health(self) -> dict[str, Any]:
        """``GET /api/health/cache``: the guide's shape.

        ``type`` and ``distributed`` describe the tier serving now; the
        ``cluster`` block describes the first (preferred) tier of the chain,
        so an outage shows as its failed nodes and failed operations.
        """
        active = self._router.active.tier
        return {
            "type": active.name,
            "distributed": active.distributed,
            "status": self.status(),
            "cluster": self._tier_block(self._router.states[0]),
        }

    async def stats(self) -> dict[str, Any]:
        """``GET /api/admin/cache/stats``: every tier, the cache's own counters, recent events."""
        c = self.counters
        tiers = []
        for state in self._router.states:
            block = self._tier_block(state, detailed=True)
            block.pop("enabled")
            tiers.append(
                {
                    "name": state.tier.name,
                    "target": state.tier.describe(),
                    "active": state is self._router.active,
                    "condition": str(state.tier.condition()),
                    "journalPending": self._router.journal.pending(state.tier.name),
                    **block,
                }
            )
        memory = self._memory
        return {
            "activeTier": self.active_tier,
            "status": self.status(),
            "uptime": self._uptime_ms(),
            "cache": {
                "hits": c.hits,
                "misses": c.misses,
                "hitRate": percent(c.hit_rate),
                "undecodable": c.undecodable,
                "sets": c.sets,
                "deletes": c.deletes,
            },
            "failovers": self._router.failovers,
            "failbacks": self._router.failbacks,
            "journal": {"pending": self._router.journal.size},
            "memory": {
                "entries": memory.entry_count,
                "bytes": memory.byte_count,
                "maxEntries": self.settings.memory_max_entries,
                "maxBytes": self.settings.memory_max_bytes,
                "evictions": memory.evictions,
            },
            "healthChecks": self._health.rounds,
            "coalescing": self._coalescing_block(),
            "near": self._near.snapshot() if self._near is not None else {"enabled": False},
            "tiers": tiers,
            "events": [e.as_json() for e in self.events.recent()],
        }

    def _coalescing_block(self) -> dict[str, Any]:
        figures = self._coalescer.stats if self._coalescer is not None else CoalescerStats()
        return {
            "enabled": self._coalescer is not None,
            "direct": figures.direct,
            "joined": figures.joined,
            "batches": figures.batches,
            "batchedKeys": figures.batched_keys,
            "singles": figures.singles,
            "split": figures.split,
        }

    async def cluster_info(self) -> dict[str, Any]:
        """``GET /api/admin/cache/cluster``: the cluster tier's topology, when there is one."""
        for state in self._router.states:
            tier = state.tier
            if tier.name == "redis-cluster":
                block = self._tier_block(state, detailed=True)
                return {
                    **block,
                    "condition": str(tier.condition()),
                    "clusterState": getattr(tier, "cluster_state", None),
                    "seeds": tier.describe(),
                }
        return {
            "enabled": False,
            "message": "no Redis Cluster is configured (REDIS_CLUSTER_ENABLED=false)",
            "nodes": [],
        }
