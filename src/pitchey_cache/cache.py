"""The public facade: prefix, TTL, serialization and limits, over the router."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from pitchey_cache.clock import Clock, SystemClock
from pitchey_cache.coalescer import DirectReads, ReadCoalescer
from pitchey_cache.config import Settings
from pitchey_cache.decorators import CachedFunction, P, R, decorator
from pitchey_cache.entries import ENTRY_TAG, Entry, unwrap
from pitchey_cache.errors import CacheError, CommandError, InvalidKeyError, ValueTooLargeError
from pitchey_cache.events import EventCallback, EventLog
from pitchey_cache.globs import escape_glob
from pitchey_cache.loading import (
    DEFAULT_LOCK_TTL,
    TAG_SPACE,
    EntryLoader,
    check_options,
    check_tags,
)
from pitchey_cache.near import NearCache, Reads
from pitchey_cache.resilience.journal import InvalidationJournal
from pitchey_cache.resilience.router import FailoverRouter, HealthPolicy, RetryPolicy
from pitchey_cache.serialization import Undecodable, decode, encode
from pitchey_cache.snapshot import (
    CacheSnapshot,
    cluster_body,
    health_body,
    stats_body,
    take_snapshot,
)
from pitchey_cache.stats import CacheStats
from pitchey_cache.tiers import MemoryTier, Tier, build_chain
from pitchey_cache.tiers.base import TierCondition

if TYPE_CHECKING:
    from pitchey_cache.metrics import CacheMetrics

logger = logging.getLogger("pitchey_cache")

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
            health=HealthPolicy(
                max_failures=s.max_failures,
                failover_timeout=s.failover_timeout_ms / 1000,
                probe_timeout=(s.connect_timeout_ms + 2 * s.command_timeout_ms) / 1000,
                health_interval=s.health_check_interval_ms / 1000,
                heartbeat_interval=s.heartbeat_interval_ms / 1000,
                heartbeat_timeout=s.heartbeat_timeout_ms / 1000,
            ),
            retry=RetryPolicy(max_retries=s.max_retries, delay=s.retry_delay_ms / 1000),
            journal=InvalidationJournal(s.journal_max_keys),
            namespace_pattern=escape_glob(self._prefix) + "*",
            clock=self._clock,
            events=self.events,
            histograms=s.metrics_enabled,
        )
        self._health = self._router.health
        # Reads go near cache (CACHE_NEAR_CACHE) -> coalescer (CACHE_COALESCE) -> router.
        self._coalescer = ReadCoalescer(self._router) if s.coalesce else None
        reads: Reads = self._coalescer or DirectReads(self._router)
        self._near = (
            NearCache(reads, router=self._router, settings=s, clock=self._clock)
            if s.near_cache
            else None
        )
        self._reads: Reads = self._near or reads
        self.counters = CacheStats()
        self._loader = EntryLoader(self)
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

    @property
    def preferred_tier_serving(self) -> bool:
        """Whether calls go to the first tier of the chain: started, and not failed over.

        A failed node or a shard served elsewhere does not change it while the tier
        itself is the one serving.
        """
        return self.started and self._router.active is self._router.states[0]

    async def start(self) -> None:
        """Create clients, probe every tier once, start the health checker."""
        if self.started:
            return
        for warning in self.settings.warnings():
            logger.warning("%s", warning)
        for tier in self._router.tiers:
            await tier.start()
        await self._health.check_all()
        self._started_at = self._clock.monotonic()
        self._health.start()
        if self._near is not None:
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
        await self._loader.close()
        if self._near is not None:
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

    @cached_property
    def metrics(self) -> CacheMetrics:
        """The Prometheus collector over this cache's figures, made on first use so that
        a cache nobody scrapes never loads prometheus_client."""
        from pitchey_cache.metrics import CacheMetrics  # noqa: PLC0415

        return CacheMetrics(self.snapshot)

    @property
    def active_tier(self) -> str:
        """The tier the next call goes to: ``redis-cluster``, ``native-redis``, ..."""
        return self._router.active.tier.name

    # -- keys and values -----------------------------------------------------

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"keys are str, got {type(key).__name__}")
        if key.isascii():  # O(1) in CPython: one byte per character, nothing to encode
            size = len(key)
        else:
            try:
                size = len(key.encode())
            except UnicodeEncodeError:
                raise InvalidKeyError(
                    "a key must be encodable as UTF-8 (no lone surrogates)"
                ) from None
        if size > MAX_KEY_BYTES:
            raise InvalidKeyError(f"a key is at most {MAX_KEY_BYTES} bytes in UTF-8, got {size}")
        if self._started_at is None:
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
        """The value, ``_MISSING``, or an :class:`Entry` whose tags the caller must check."""
        if data is None:
            self.counters.misses += 1
            return _MISSING
        try:
            if data[:1] == ENTRY_TAG:
                entry = unwrap(data)
                if not entry.fresh(self._loader.wall()):
                    self.counters.misses += 1
                    return _MISSING
                if entry.tags:
                    return entry
                value = entry.value
            else:
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
        if data is None:
            self.counters.misses += 1
            return default
        value = self._decode(data)
        if type(value) is Entry:
            value = await self._tagged(value)
        return default if value is _MISSING else value

    async def _tagged(self, entry: Entry) -> Any:
        if await self._loader.tags_hold(entry):
            self.counters.hits += 1
            return entry.value
        self.counters.misses += 1
        return _MISSING

    async def set(
        self,
        key: str,
        value: Any,
        ttl: int | None = None,
        *,
        only_if_absent: bool = False,
        tags: Sequence[str] | None = None,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (default CACHE_TTL).

        With ``only_if_absent``, store only when the key is missing and say
        whether it was stored. With ``tags``, :meth:`invalidate_tags` of any
        of them drops the value (it is then stored in an envelope, not as
        plain JSON).
        """
        full = self._key(key)
        data = self._encode(key, value)
        seconds = self._ttl(ttl)
        names = check_tags(tags)
        if names:
            data = await self._loader.tagged_form(key, data, seconds, names)
        stored = await self._router.execute(
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
        removed = await self._router.execute(
            "delete", lambda t: t.delete(full), keys=full, writes=True
        )
        self.counters.deletes += removed
        return removed

    async def exists(self, key: str) -> bool:
        full = self._key(key)
        return bool(await self._router.execute("exists", lambda t: t.exists([full]), keys=(full,)))

    async def expire(self, key: str, ttl: int) -> bool:
        """Set a new TTL on an existing key; False when the key is missing."""
        full = self._key(key)
        seconds = self._ttl(ttl)
        return await self._router.execute(
            "expire", lambda t: t.expire(full, seconds), keys=(full,), writes=True
        )

    async def ttl(self, key: str) -> int:
        """Seconds left; -1 when the key has no expiry; -2 when it is missing."""
        full = self._key(key)
        return await self._router.execute("ttl", lambda t: t.ttl(full), keys=(full,))

    async def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` atomically and return the new value (a missing key counts from 0).

        Never retried on the same tier: a timed-out INCR may have run. As Redis,
        every tier raises :class:`CommandError` when the stored value or the result
        is not a signed 64-bit integer; an ``amount`` that isn't one is refused
        before any tier is asked.
        """
        full = self._key(key)
        if type(amount) is not int or not -(2**63) <= amount < 2**63:
            raise CommandError(f"incr amount must be a signed 64-bit int, got {amount!r}")
        return await self._router.execute(
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
            if type(value) is Entry:
                value = await self._tagged(value)
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
        await self._router.execute(
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
        removed = await self._router.execute(
            "delete_pattern", lambda t: t.delete_matching(full), writes=True, pattern=full
        )
        self.counters.deletes += removed
        return removed

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: int | None = None,
        *,
        lock: bool = False,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        early_refresh: bool = False,
        stale_if_error: float | None = None,
        cache_none: bool = True,
        tags: Sequence[str] | None = None,
    ) -> Any:
        """The cached value, or ``await loader()`` stored for ``ttl`` seconds.

        Concurrent misses on one key in this process share one loader call.
        ``lock``: one loader call across processes (a Redis lock held at most
        ``lock_ttl`` seconds; waiters poll for the value). ``early_refresh``:
        the value is recomputed in the background shortly before it expires.
        ``stale_if_error``: when the loader raises after the value expired,
        the old value is returned for up to that many seconds more.
        ``cache_none=False``: a None from the loader is returned, not stored.
        ``tags``: :meth:`invalidate_tags` of any of them drops the entry.
        The loader's own exceptions propagate. See the README's "Loaders".
        """
        full = self._key(key)
        options = check_options(
            self._ttl(ttl),
            lock=lock,
            lock_ttl=lock_ttl,
            early_refresh=early_refresh,
            stale_if_error=stale_if_error,
            cache_none=cache_none,
            tags=tags,
        )
        return await self._loader.get_or_set(key, full, loader, options)

    def cached(
        self,
        ttl: int | None = None,
        *,
        key: str | None = None,
        lock: bool = False,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        early_refresh: bool = False,
        stale_if_error: float | None = None,
        cache_none: bool = True,
        tags: Sequence[str] | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
        """Cache an async function's results with :meth:`get_or_set`'s options::

            @cache.cached(ttl=300, key="pitch:{pitch_id}", lock=True, early_refresh=True)
            async def load_pitch(pitch_id: int) -> dict: ...

            await load_pitch(42)
            await load_pitch.invalidate(42)

        ``key`` is a ``str.format`` template over the parameters; without it the
        key is the function's qualified name and its arguments as JSON.
        """
        options = check_options(
            self._ttl(ttl),
            lock=lock,
            lock_ttl=lock_ttl,
            early_refresh=early_refresh,
            stale_if_error=stale_if_error,
            cache_none=cache_none,
            tags=tags,
        )
        return decorator(self, key, options)

    async def invalidate_tags(self, *tags: str) -> None:
        """Drop every entry stored with any of ``tags``, without scanning the keyspace.

        Each tag has a token in Redis; entries carry the tokens they were
        stored with, and a read that finds a token changed is a miss. So this
        deletes one key per tag, whatever the number of entries.
        """
        names = check_tags(tags)
        if not names:
            return
        if not self.started:
            raise CacheError("the cache is not started: use `async with cache:`")
        full = [self._prefix + TAG_SPACE + name for name in names]
        await self._router.execute("delete", lambda t: t.delete(full), keys=full, writes=True)

    # -- state, for the endpoints and metrics --------------------------------------

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

    def snapshot(self) -> CacheSnapshot:
        """Every figure of this cache at this instant: what the endpoints, ``/metrics``,
        the dashboard and ``pitchey-cache status`` show."""
        return take_snapshot(
            router=self._router,
            status=self.status(),
            uptime_ms=self._uptime_ms(),
            counters=self.counters,
            memory=self._memory,
            max_entries=self.settings.memory_max_entries,
            max_bytes=self.settings.memory_max_bytes,
            health_checks=self._health.rounds,
            coalescing=self._coalescer.stats if self._coalescer is not None else None,
            near=self._near.snapshot() if self._near is not None else None,
        )

    async def health(self) -> dict[str, Any]:
        """``GET /api/health/cache``'s body (see :func:`pitchey_cache.snapshot.health_body`)."""
        return health_body(self.snapshot())

    async def stats(self) -> dict[str, Any]:
        """``GET /api/admin/cache/stats``'s body: every tier, the cache's counters, events."""
        return stats_body(self.snapshot())

    async def cluster_info(self) -> dict[str, Any]:
        """``GET /api/admin/cache/cluster``'s body: the cluster tier, when there is one."""
        return cluster_body(self.snapshot())
