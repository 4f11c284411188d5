"""A synchronous facade over :class:`~pitchey_cache.Cache`, for Django, Flask and scripts.

There is one implementation of the failover machinery, the async one. A
:class:`SyncCache` runs its :class:`Cache` on an event loop in a daemon thread of
the process (one loop per process, started on first use) and hands each call to it
with :func:`asyncio.run_coroutine_threadsafe`, then waits with a deadline. Any
number of threads may call it at once: the loop serialises what must be serialised,
exactly as it does for concurrent asyncio tasks.

Forking (gunicorn ``--preload``, multiprocessing) copies the parent's loop, sockets
and journal into the child, but not the loop's thread. A child never touches that
copy: the inherited state is abandoned (kept referenced, so no finaliser of the
parent's clients runs in the child) and a fresh loop and cache start on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from pitchey_cache.cache import Cache
from pitchey_cache.config import Settings
from pitchey_cache.errors import CacheError
from pitchey_cache.events import EventCallback

logger = logging.getLogger("pitchey_cache")

_T = TypeVar("_T")
_MISSING: Final[Any] = object()
# How long the interpreter's exit waits for every SyncCache to close, in total.
EXIT_CLOSE_TIMEOUT: Final = 5.0


class LoopThread:
    """An event loop running forever in a daemon thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pitchey-cache-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def stop(self, timeout: float) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


# Process-wide state. After a fork, `_forget_parent` replaces all of it in the child.
_lock = threading.Lock()
_loop_thread: LoopThread | None = None
_instances: weakref.WeakSet[SyncCache] = weakref.WeakSet()
# What a child inherited from its parent: held forever and never used, so that no
# finaliser closes (or flushes into) the parent's loop and connections from here.
_abandoned: list[object] = []


def loop_thread() -> LoopThread:
    """The process's loop thread, started on first use."""
    global _loop_thread  # noqa: PLW0603 - one loop per process, by design
    thread = _loop_thread
    if thread is not None:  # every call but the first: no lock
        return thread
    with _lock:
        if _loop_thread is None:
            _loop_thread = LoopThread()
        return _loop_thread


def _forget_parent() -> None:
    """Runs in a freshly forked child, before anything else can use the cache."""
    global _lock, _loop_thread  # noqa: PLW0603 - the child's own copies
    # A lock another thread of the parent held at the fork stays held forever here.
    _lock = threading.Lock()
    if _loop_thread is not None:
        _abandoned.append(_loop_thread)
        _loop_thread = None
    for instance in list(_instances):
        instance._forget_parent()


os.register_at_fork(after_in_child=_forget_parent)


def _close_all_at_exit() -> None:
    """Close every SyncCache this process started, within EXIT_CLOSE_TIMEOUT in total."""
    thread = _loop_thread
    if thread is None or thread.in_loop_thread():
        return
    caches = [c._cache for c in list(_instances) if c._cache is not None]
    if caches:
        closing = thread.submit(_close_quietly(caches))
        try:
            closing.result(EXIT_CLOSE_TIMEOUT)
        except (TimeoutError, concurrent.futures.TimeoutError):
            logger.warning(
                "closing the cache at exit took over %.0f s; gave up", EXIT_CLOSE_TIMEOUT
            )
    thread.stop(timeout=1.0)


async def _close_quietly(caches: list[Cache]) -> None:
    results = await asyncio.gather(*(c.close() for c in caches), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            logger.warning("closing the cache at exit failed: %r", result)


atexit.register(_close_all_at_exit)


def call_deadline(settings: Settings) -> float:
    """The longest a call may take on these settings before the wait gives up, in seconds.

    The router bounds every call already (each tier: every attempt ends within its
    command timeout, with RETRY_DELAY between attempts; the in-memory tier always
    answers); this is that bound, plus a connect timeout for a lazy start. Only a loop
    blocked by foreign code (a slow ``on_event`` callback) gets near it.
    """
    per_attempt = (settings.command_timeout_ms + settings.retry_delay_ms) / 1000
    tiers = len(settings.tier_chain())
    return tiers * (settings.max_retries + 1) * per_attempt + settings.connect_timeout_ms / 1000


class SyncCache:
    """:class:`~pitchey_cache.Cache` without ``await``; thread-safe and fork-safe.

    ``SyncCache.from_env()`` or ``SyncCache(settings)`` does no I/O: the cache starts
    on first use (or on :meth:`start`, or ``with SyncCache.from_env() as cache:``),
    on the process's loop thread, and again on first use after :meth:`close` or in a
    forked child. Every method waits at most ``call_timeout`` seconds (default:
    :func:`call_deadline` of the settings) and raises :class:`CacheError` past it.

    Each method has an awaitable twin (``aget``, ``aset``, ...) for code running on
    another event loop (Django under ASGI): it awaits the call on the cache's loop
    without blocking the caller's.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        call_timeout: float | None = None,
        cache_factory: Callable[[Settings], Cache] = Cache,
    ) -> None:
        self.settings = settings or Settings()
        self.call_timeout = call_deadline(self.settings) if call_timeout is None else call_timeout
        if self.call_timeout <= 0:
            raise CacheError(f"call_timeout must be > 0 seconds, got {call_timeout!r}")
        self._factory = cache_factory
        self._cache: Cache | None = None
        self._start_lock = threading.Lock()
        # A start still running after its caller gave up waiting: the next caller
        # waits for it rather than starting the same cache twice.
        self._starting: concurrent.futures.Future[None] | None = None
        self._pid = os.getpid()
        _instances.add(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncCache:
        return cls(Settings.from_env(environ))

    def __repr__(self) -> str:
        cache = self._cache
        if cache is None or self._pid != os.getpid():
            return f"<SyncCache [not started, chain={' -> '.join(self.settings.tier_chain())}]>"
        return f"<SyncCache {cache!r}>"

    # -- lifecycle ---------------------------------------------------------------

    def _forget_parent(self) -> None:
        if self._cache is not None:
            _abandoned.append(self._cache)
        self._cache = None
        self._starting = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()

    def _started_cache(self) -> Cache:
        """The started cache of this process, starting it on first use."""
        if self._pid != os.getpid():
            # A fork the at-fork hook did not see (it runs for os.fork, which
            # multiprocessing and gunicorn use; this covers any other way).
            self._forget_parent()
        cache = self._cache
        if cache is not None and cache.started:
            return cache
        with self._start_lock:
            cache = self._cache
            if cache is None or not cache.started:
                cache = self._cache = cache or self._factory(self.settings)
                if self._starting is None or self._starting.done():
                    self._starting = loop_thread().submit(cache.start())
                # Never cancelled: a start cut halfway would leave clients half made.
                self._wait(self._starting, "start", cancel=False)
            return cache

    def start(self) -> None:
        """Create the clients and probe every tier now rather than on first use."""
        self._started_cache()

    def close(self) -> None:
        """Close the clients and stop the health checker; the next call starts again."""
        cache = self._cache
        if cache is None or self._pid != os.getpid():
            return
        with self._start_lock:
            # A closed Cache is not restarted: the next call builds a fresh one.
            self._cache = None
            self._starting = None
            self._wait(loop_thread().submit(cache.close()), "close", cancel=False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def cache(self) -> Cache:
        """The async cache this facade drives (started), for ``create_app`` and the like.
        Its coroutines must run on :func:`loop_thread`'s loop."""
        return self._started_cache()

    # -- running calls on the loop ------------------------------------------------

    def _wait(self, future: concurrent.futures.Future[_T], what: str, *, cancel: bool = True) -> _T:
        try:
            return future.result(self.call_timeout)
        except (TimeoutError, concurrent.futures.TimeoutError):
            if cancel:
                future.cancel()
            raise CacheError(
                f"SyncCache.{what}() did not finish within {self.call_timeout:g} s; "
                "is the cache's event loop blocked by an event callback?"
            ) from None

    def run(self, call: Callable[[Cache], Coroutine[Any, Any, _T]], what: str = "run") -> _T:
        """Run ``call(cache)`` on the cache's loop and wait for its result.

        For a few Cache calls in one hop (the Django and Flask backends use it);
        ``what`` names the call in errors. Never from the loop's own thread.
        """
        thread = loop_thread()
        if thread.in_loop_thread():
            raise CacheError(
                f"SyncCache.{what}() was called on the cache's own event loop thread "
                "(from an on_event callback?), where waiting would deadlock; "
                f"use the async Cache there (await sync_cache.cache.{what}(...))"
            )
        cache = self._started_cache()
        return self._wait(thread.submit(call(cache)), what)

    async def arun(self, call: Callable[[Cache], Coroutine[Any, Any, _T]], what: str = "run") -> _T:
        """:meth:`run` for code on another event loop: awaits without blocking it."""
        thread = loop_thread()
        if thread.in_loop_thread():
            # Already on the cache's loop: no hop needed.
            if self._cache is None or not self._cache.started:
                raise CacheError(f"SyncCache.a{what}() on the loop thread needs a started cache")
            return await call(self._cache)
        cache = self._cache
        if cache is None or not cache.started or self._pid != os.getpid():
            cache = await asyncio.to_thread(self._started_cache)
        future = thread.submit(call(cache))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.call_timeout)
        except TimeoutError:
            raise CacheError(
                f"SyncCache.a{what}() did not finish within {self.call_timeout:g} s"
            ) from None

    # -- the API (see Cache for each method's meaning) -----------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.run(lambda c: c.get(key, default), "get")

    def set(
        self, key: str, value: Any, ttl: int | None = None, *, only_if_absent: bool = False
    ) -> bool:
        return self.run(lambda c: c.set(key, value, ttl, only_if_absent=only_if_absent), "set")

    def delete(self, *keys: str) -> int:
        return self.run(lambda c: c.delete(*keys), "delete")

    def exists(self, key: str) -> bool:
        return self.run(lambda c: c.exists(key), "exists")

    def expire(self, key: str, ttl: int) -> bool:
        return self.run(lambda c: c.expire(key, ttl), "expire")

    def ttl(self, key: str) -> int:
        return self.run(lambda c: c.ttl(key), "ttl")

    def incr(self, key: str, amount: int = 1) -> int:
        return self.run(lambda c: c.incr(key, amount), "incr")

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(keys)
        return self.run(lambda c: c.get_many(wanted), "get_many")

    def set_many(self, items: Mapping[str, Any], ttl: int | None = None) -> None:
        items = dict(items)
        self.run(lambda c: c.set_many(items, ttl), "set_many")

    def delete_pattern(self, pattern: str) -> int:
        return self.run(lambda c: c.delete_pattern(pattern), "delete_pattern")

    def get_or_set(self, key: str, loader: Callable[[], Any], ttl: int | None = None) -> Any:
        """The cached value, or ``loader()`` stored for ``ttl`` seconds.

        ``loader`` runs in the calling thread (its thread-locals, such as a Django
        database connection, are the caller's), and the wait for it has no deadline.
        Concurrent misses on one key in this process, from any thread, share one
        loader call, as with :meth:`Cache.get_or_set`.
        """
        thread = loop_thread()
        if thread.in_loop_thread():
            raise CacheError("SyncCache.get_or_set() was called on the cache's own loop thread")
        cache = self._started_cache()
        wanted: concurrent.futures.Future[None] = concurrent.futures.Future()
        loaded: concurrent.futures.Future[Any] = concurrent.futures.Future()

        async def load() -> Any:
            # Runs only when this call owns the key's flight: ask the caller's thread.
            wanted.set_result(None)
            return await asyncio.wrap_future(loaded)

        result = thread.submit(cache.get_or_set(key, load, ttl))
        concurrent.futures.wait(
            [result, wanted], self.call_timeout, concurrent.futures.FIRST_COMPLETED
        )
        if wanted.done():
            try:
                loaded.set_result(loader())
            except BaseException as exc:  # noqa: BLE001 - handed to the flight; re-raised below
                loaded.set_exception(exc)
        return self._wait(result, "get_or_set")

    def on_event(self, callback: EventCallback) -> Callable[[], None]:
        """As :meth:`Cache.on_event`; the callback runs on the cache's loop thread, and
        must not call this SyncCache (that raises rather than deadlock)."""
        return self._started_cache().on_event(callback)

    @property
    def active_tier(self) -> str:
        return self._started_cache().active_tier

    def status(self) -> str:
        return self._started_cache().status()

    def health(self) -> dict[str, Any]:
        return self.run(lambda c: c.health(), "health")

    def stats(self) -> dict[str, Any]:
        return self.run(lambda c: c.stats(), "stats")

    # -- awaitable twins, for code on another event loop ------------------------------

    async def aget(self, key: str, default: Any = None) -> Any:
        return await self.arun(lambda c: c.get(key, default), "get")

    async def aset(
        self, key: str, value: Any, ttl: int | None = None, *, only_if_absent: bool = False
    ) -> bool:
        return await self.arun(
            lambda c: c.set(key, value, ttl, only_if_absent=only_if_absent), "set"
        )

    async def adelete(self, *keys: str) -> int:
        return await self.arun(lambda c: c.delete(*keys), "delete")

    async def aexists(self, key: str) -> bool:
        return await self.arun(lambda c: c.exists(key), "exists")

    async def aexpire(self, key: str, ttl: int) -> bool:
        return await self.arun(lambda c: c.expire(key, ttl), "expire")

    async def attl(self, key: str) -> int:
        return await self.arun(lambda c: c.ttl(key), "ttl")

    async def aincr(self, key: str, amount: int = 1) -> int:
        return await self.arun(lambda c: c.incr(key, amount), "incr")

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(keys)
        return await self.arun(lambda c: c.get_many(wanted), "get_many")

    async def aset_many(self, items: Mapping[str, Any], ttl: int | None = None) -> None:
        items = dict(items)
        await self.arun(lambda c: c.set_many(items, ttl), "set_many")

    async def adelete_pattern(self, pattern: str) -> int:
        return await self.arun(lambda c: c.delete_pattern(pattern), "delete_pattern")

    async def ahealth(self) -> dict[str, Any]:
        return await self.arun(lambda c: c.health(), "health")

    async def astats(self) -> dict[str, Any]:
        return await self.arun(lambda c: c.stats(), "stats")
