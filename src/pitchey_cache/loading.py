"""``get_or_set`` behind the facade: single flight, the cross-process lock, early refresh,
stale-if-error and tags.

What a caller of ``get_or_set`` sees:

- a fresh entry (younger than its TTL, no tag invalidated since) is returned at once;
- on a miss, one caller per process runs the loader and the others of that
  process await the same call; with ``lock=True`` one caller across processes
  runs it: the others poll for its value, and a lock left by a dead holder
  expires after ``lock_ttl`` seconds, when one of them takes over;
- with ``early_refresh=True``, a read in the last stretch of the TTL returns
  the current value and starts one refresh in the background, so a hot key
  is never missing;
- with ``stale_if_error=N``, a loader that raises after the value expired is
  logged, and the old value is returned for up to N seconds past its expiry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pitchey_cache.entries import ENTRY_TAG, Entry, unwrap, wrap
from pitchey_cache.errors import CacheError, CommandError, ValueTooLargeError
from pitchey_cache.serialization import Undecodable, decode, encode

if TYPE_CHECKING:
    from pitchey_cache.cache import Cache

logger = logging.getLogger("pitchey_cache")

# Reserved key spaces under the prefix: a loader's lock and a tag's token.
LOCK_SPACE: Final = "__lock__:"
TAG_SPACE: Final = "__tag__:"
DEFAULT_LOCK_TTL: Final = 10.0
# How long a tag's token lives. A token that expires (or is evicted) only
# invalidates the entries of that tag early, never serves a stale one.
TAG_TTL: Final = 30 * 24 * 3600
# Waiters poll for the lock holder's value, from every 20 ms up to every 200 ms.
_FIRST_POLL: Final = 0.02
_LAST_POLL: Final = 0.2


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """One ``get_or_set`` call's options, checked once."""

    ttl: int
    lock: bool = False
    lock_ttl: float = DEFAULT_LOCK_TTL
    early_refresh: bool = False
    stale_if_error: float | None = None
    cache_none: bool = True
    tags: tuple[str, ...] = ()

    @property
    def stored_ttl(self) -> int:
        """The key's Redis TTL: the logical TTL, plus the window a stale value may serve."""
        return self.ttl + math.ceil(self.stale_if_error or 0)


def check_tags(tags: Sequence[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise CacheError(f"tags must be a list of str, got the str {tags!r}")
    checked = tuple(dict.fromkeys(tags))
    for tag in checked:
        if not isinstance(tag, str) or not tag:
            raise CacheError(f"a tag must be a non-empty str, got {tag!r}")
    return checked


def check_options(
    ttl: int,
    *,
    lock: bool,
    lock_ttl: float,
    early_refresh: bool,
    stale_if_error: float | None,
    cache_none: bool,
    tags: Sequence[str] | None,
) -> LoadOptions:
    if stale_if_error is not None and (
        isinstance(stale_if_error, bool)
        or not isinstance(stale_if_error, int | float)
        or not 0 < stale_if_error < math.inf
    ):
        raise CacheError(f"stale_if_error must be a number of seconds > 0, got {stale_if_error!r}")
    if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, int | float) or lock_ttl <= 0:
        raise CacheError(f"lock_ttl must be a number of seconds > 0, got {lock_ttl!r}")
    return LoadOptions(
        ttl=ttl,
        lock=bool(lock),
        lock_ttl=float(lock_ttl),
        early_refresh=bool(early_refresh),
        stale_if_error=stale_if_error,
        cache_none=bool(cache_none),
        tags=check_tags(tags),
    )


class EntryLoader:
    """Runs loaders for one :class:`Cache`: one call per key at a time in this process,
    across processes under a lock, and early refreshes in the background."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._router = cache._router
        self._clock = cache._clock
        self._prefix = cache._prefix
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._refreshes: dict[str, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return (
            f"<EntryLoader [{len(self._flights)} loads, {len(self._refreshes)} refreshes running]>"
        )

    def wall(self) -> float:
        return self._clock.now().timestamp()

    async def close(self) -> None:
        tasks = [task for task in self._refreshes.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading ---------------------------------------------------------------

    async def read(self, full: str) -> Entry | None:
        """The entry at ``full``, fresh or not, unless missing, foreign or its tags moved on."""
        try:
            data = await self._router.execute("get", lambda t: t.get(full), keys=(full,))
        except CommandError:
            data = None
        if data is None:
            return None
        try:
            entry = unwrap(data) if data[:1] == ENTRY_TAG else Entry(decode(data))
        except Undecodable:
            self._cache.counters.undecodable += 1
            return None
        if entry.tags and not await self.tags_hold(entry):
            return None
        return entry

    async def tags_hold(self, entry: Entry) -> bool:
        """Whether no tag of ``entry`` was invalidated since it was computed."""
        names = list(entry.tags)
        current = await self._tag_tokens_now(names)
        return all(current[n] == entry.tags[n] for n in names)

    async def _tag_tokens_now(self, names: Sequence[str]) -> dict[str, str | None]:
        keys = [self._prefix + TAG_SPACE + n for n in names]
        found: list[bytes | None]
        if len(keys) == 1:
            # Most entries have one tag; a GET costs less than an MGET on every tier.
            one = keys[0]
            found = [await self._router.execute("get", lambda t: t.get(one), keys=keys)]
        else:
            found = await self._router.execute("get_many", lambda t: t.get_many(keys), keys=keys)
        return {
            n: (v.decode(errors="replace") if v else None)
            for n, v in zip(names, found, strict=True)
        }

    async def tag_tokens(self, names: Sequence[str]) -> dict[str, str]:
        """Each tag's current token, made (SET NX) for tags that have none yet."""
        if not names:
            return {}
        tokens = await self._tag_tokens_now(names)
        out: dict[str, str] = {}
        for name, token in tokens.items():
            out[name] = token if token is not None else await self._new_tag_token(name)
        return out

    async def _new_tag_token(self, name: str) -> str:
        key = self._prefix + TAG_SPACE + name
        token = secrets.token_hex(8)
        stored = await self._router.execute(
            "set",
            lambda t: t.set(key, token.encode(), TAG_TTL, True),
            keys=(key,),
            writes=True,
            retry_safe=False,
        )
        if stored:
            return token
        current = await self._router.execute("get", lambda t: t.get(key), keys=(key,))
        # Deleted again in between: a token nobody holds invalidates this entry at once.
        return current.decode(errors="replace") if current else token + "-lost"

    async def tagged_form(self, key: str, data: bytes, ttl: int, names: Sequence[str]) -> bytes:
        """The stored form of a ``set`` value with tags: an envelope holding the tokens."""
        tokens = await self.tag_tokens(names)
        now = self.wall()
        out = wrap(data, Entry(None, computed_at=now, fresh_until=now + ttl, tags=tokens))
        limit = self._cache.settings.max_value_bytes
        if len(out) > limit:
            raise ValueTooLargeError(key, len(out), limit)
        return out

    # -- get_or_set --------------------------------------------------------------

    async def get_or_set(
        self, key: str, full: str, loader: Callable[[], Awaitable[Any]], options: LoadOptions
    ) -> Any:
        entry = await self.read(full)
        counters = self._cache.counters
        if entry is not None:
            now = self.wall()
            if entry.fresh(now):
                counters.hits += 1
                if options.early_refresh and entry.due_for_refresh(now):
                    self._start_refresh(key, full, loader, options)
                return entry.value
        counters.misses += 1
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._load(key, full, loader, options, entry))
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _load(
        self,
        key: str,
        full: str,
        loader: Callable[[], Awaitable[Any]],
        options: LoadOptions,
        stale: Entry | None,
    ) -> Any:
        if not options.lock:
            return await self._run_loader(full, loader, options, stale)
        lock = self._prefix + LOCK_SPACE + key
        token = secrets.token_hex(16)
        deadline = self._clock.monotonic() + 2 * options.lock_ttl
        poll = _FIRST_POLL
        while True:
            if await self._acquire(lock, token, options.lock_ttl):
                try:
                    # The previous holder may have stored the value while we waited.
                    entry = await self.read(full)
                    if entry is not None and entry.fresh(self.wall()):
                        return entry.value
                    return await self._run_loader(full, loader, options, stale)
                finally:
                    await self._release(lock, token)
            self._cache.counters.lock_waits += 1
            await self._clock.sleep(poll)
            poll = min(poll * 2, _LAST_POLL)
            entry = await self.read(full)
            if entry is not None and entry.fresh(self.wall()):
                return entry.value
            if self._clock.monotonic() >= deadline:
                # The lock keeps being taken and no value comes: load without it.
                logger.warning(
                    "no value for %r after %gs of waiting; loading", key, 2 * options.lock_ttl
                )
                return await self._run_loader(full, loader, options, stale)

    async def _acquire(self, lock: str, token: str, ttl: float) -> bool:
        ttl_ms = max(1, round(ttl * 1000))
        return await self._router.execute(
            "lock", lambda t: t.acquire_lock(lock, token, ttl_ms), keys=(lock,), retry_safe=False
        )

    async def _release(self, lock: str, token: str) -> None:
        # After a failover the lock may live on a tier this call doesn't reach: then
        # it simply expires. The router never raises an outage; a shield keeps a
        # cancelled caller from leaving the lock to its TTL.
        await asyncio.shield(
            self._router.execute(
                "unlock", lambda t: t.release_lock(lock, token), keys=(lock,), retry_safe=False
            )
        )

    async def _run_loader(
        self,
        full: str,
        loader: Callable[[], Awaitable[Any]],
        options: LoadOptions,
        stale: Entry | None,
    ) -> Any:
        """Call the loader once and store what it returns; on its error, maybe the stale value."""
        counters = self._cache.counters
        # Tokens are read before the loader runs: an invalidation during the load
        # then leaves the new entry already invalid, never a stale one valid.
        tokens = await self.tag_tokens(options.tags)
        started = time.perf_counter()
        counters.loads += 1
        try:
            value = await loader()
        except Exception:
            if (
                options.stale_if_error is not None
                and stale is not None
                and self.wall() < stale.fresh_until + options.stale_if_error
            ):
                counters.stale_served += 1
                logger.exception("loader for %r failed; serving the value that expired", full)
                return stale.value
            raise
        load_seconds = time.perf_counter() - started
        if value is None and not options.cache_none:
            return None
        await self.store(full, value, options, load_seconds, tokens)
        return value

    async def store(
        self,
        full: str,
        value: Any,
        options: LoadOptions,
        load_seconds: float,
        tokens: dict[str, str],
    ) -> None:
        computed_at = self.wall()
        entry = Entry(
            value,
            computed_at=computed_at,
            load_seconds=load_seconds,
            fresh_until=computed_at + options.ttl,
            tags=tokens,
        )
        data = wrap(encode(value), entry)
        limit = self._cache.settings.max_value_bytes
        if len(data) > limit:
            raise ValueTooLargeError(full.removeprefix(self._prefix), len(data), limit)
        seconds = options.stored_ttl
        await self._router.execute(
            "set", lambda t: t.set(full, data, seconds, False), keys=(full,), writes=True
        )
        self._cache.counters.sets += 1

    # -- early refresh -----------------------------------------------------------

    def _start_refresh(
        self, key: str, full: str, loader: Callable[[], Awaitable[Any]], options: LoadOptions
    ) -> None:
        running = self._refreshes.get(key)
        if (running is not None and not running.done()) or key in self._flights:
            return
        task = asyncio.create_task(
            self._refresh(key, full, loader, options), name=f"pitchey-cache refresh {key}"
        )
        self._refreshes[key] = task
        task.add_done_callback(lambda _: self._refreshes.pop(key, None))

    async def _refresh(
        self, key: str, full: str, loader: Callable[[], Awaitable[Any]], options: LoadOptions
    ) -> None:
        """Recompute a value before it expires, by one caller across processes.

        The lock is taken without waiting, whatever ``lock`` says: a caller
        that finds it held leaves the refresh to its holder.
        """
        lock = self._prefix + LOCK_SPACE + key
        token = secrets.token_hex(16)
        try:
            if not await self._acquire(lock, token, options.lock_ttl):
                return
            try:
                entry = await self.read(full)
                if entry is not None and not entry.due_for_refresh(self.wall()):
                    return  # refreshed by someone else meanwhile
                self._cache.counters.refreshes += 1
                # No stale fallback here: the current value is still fresh, and a
                # failure is the refresh's own (counted below), not a stale serve.
                await self._run_loader(full, loader, options, None)
            finally:
                await self._release(lock, token)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The current value keeps serving until it expires; the caller's next
            # read after that runs the loader itself and sees the error.
            self._cache.counters.refresh_failures += 1
            logger.exception("early refresh of %r failed", full)
