"""A cachelib cache for Flask-Caching, served by pitchey-cache's failover chain.

```python
app.config["CACHE_TYPE"] = "pitchey_cache.contrib.flask.PitcheyCache"
app.config["CACHE_DEFAULT_TIMEOUT"] = 300
app.config["CACHE_OPTIONS"] = {"serializer": "json"}  # or any REDIS_* variable
cache = flask_caching.Cache(app)
```

Settings come from the same environment variables as the rest of pitchey-cache;
``CACHE_OPTIONS`` may name any of them to override it. Every app and thread with the
same settings shares one :class:`~pitchey_cache.SyncCache`. Keys are stored under
``flask:`` + ``CACHE_KEY_PREFIX`` inside REDIS_KEY_PREFIX; :meth:`clear` deletes
exactly those.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from flask_caching.backends.base import BaseCache

from pitchey_cache.cache import Cache
from pitchey_cache.contrib._backend import (
    FOREVER_SECONDS,
    MISSING,
    EntryCodec,
    Serializer,
    settings_from_options,
    shared_sync_cache,
)
from pitchey_cache.errors import UnsupportedValueError
from pitchey_cache.globs import escape_glob
from pitchey_cache.sync import SyncCache

if TYPE_CHECKING:
    from flask import Flask

_T = TypeVar("_T")
NAMESPACE: Final = "flask:"


class PitcheyCache(BaseCache):
    """cachelib's contract over the failover chain; see the module docstring.

    Timeouts follow cachelib: None is ``default_timeout``, 0 never expires (stored
    for a century: every tier takes a TTL), a timedelta or float is rounded up to
    whole seconds. ``get`` returns None on a miss. ``inc``/``dec`` are atomic.
    """

    def __init__(
        self,
        default_timeout: int | dt.timedelta = 300,
        key_prefix: str | Callable[[], str] | None = "",
        serializer: str = "json",
        ignore_delete_many_errors: bool = False,
        **variables: Any,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout,  # type: ignore[arg-type]
            ignore_delete_many_errors=ignore_delete_many_errors,
        )
        self.key_prefix = key_prefix or ""
        self._codec = EntryCodec(Serializer.parse("serializer", serializer), framework="Flask")
        self._sync: SyncCache = shared_sync_cache(
            settings_from_options(variables, where="CACHE_OPTIONS")
        )

    @classmethod
    def factory(
        cls,
        app: Flask,  # noqa: ARG003 - Flask-Caching's signature; the app holds nothing we need
        config: dict[str, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> PitcheyCache:
        """Flask-Caching's constructor hook: ``kwargs`` are CACHE_OPTIONS plus
        ``default_timeout``; CACHE_KEY_PREFIX becomes the key prefix."""
        kwargs = dict(kwargs)
        kwargs.setdefault("key_prefix", config.get("CACHE_KEY_PREFIX") or "")
        return cls(*args, **kwargs)

    @property
    def sync_cache(self) -> SyncCache:
        """The shared :class:`~pitchey_cache.SyncCache` (health, stats, active tier)."""
        return self._sync

    # -- keys, timeouts, values -----------------------------------------------------------

    def _prefix(self) -> str:
        prefix = self.key_prefix() if callable(self.key_prefix) else self.key_prefix
        return NAMESPACE + prefix

    def _ttl(self, timeout: int | dt.timedelta | None) -> int:
        seconds = self._normalize_timeout(timeout)
        # Negative: already expired. The callers delete instead of storing.
        return FOREVER_SECONDS if seconds == 0 else max(seconds, -1)

    def _run(self, call: Callable[[Cache], Coroutine[Any, Any, _T]], what: str) -> _T:
        try:
            return self._sync.run(call, what)
        except UnsupportedValueError as exc:
            raise self._codec.hint(exc) from None

    def _load(self, stored: Any) -> Any:
        if stored is MISSING:
            return None
        value = self._codec.load(stored)
        return None if value is MISSING else value

    @staticmethod
    async def _store(
        cache: Cache, items: dict[str, Any], ttl: int, only_if_absent: bool = False
    ) -> bool:
        if ttl < 0:
            await cache.delete(*items)
            return True
        if len(items) == 1 or only_if_absent:
            ((key, value),) = items.items()
            return await cache.set(key, value, ttl, only_if_absent=only_if_absent)
        await cache.set_many(items, ttl)
        return True

    # -- cachelib's API ---------------------------------------------------------------

    def get(self, key: str) -> Any:
        full = self._prefix() + key
        return self._load(self._run(lambda c: c.get(full, MISSING), "get"))

    def get_many(self, *keys: str) -> list[Any]:
        if not keys:
            return []
        prefix = self._prefix()
        full = [prefix + key for key in keys]
        found = self._run(lambda c: c.get_many(full), "get_many")
        return [self._load(found.get(k, MISSING)) for k in full]

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        items, ttl = {self._prefix() + key: self._codec.dump(value)}, self._ttl(timeout)
        return self._run(lambda c: self._store(c, items, ttl), "set")

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        items, ttl = {self._prefix() + key: self._codec.dump(value)}, self._ttl(timeout)
        return self._run(lambda c: self._store(c, items, ttl, only_if_absent=True), "add")

    def set_many(
        self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        if not mapping:
            return []
        prefix, ttl = self._prefix(), self._ttl(timeout)
        items = {prefix + key: self._codec.dump(value) for key, value in mapping.items()}
        self._run(lambda c: self._store(c, items, ttl), "set_many")
        return list(mapping)

    def delete(self, key: str) -> bool:
        full = self._prefix() + key
        return self._run(lambda c: c.delete(full), "delete") > 0

    def delete_many(self, *keys: str) -> list[Any]:
        """Delete keys; all of them are returned, as a missing key counts as deleted."""
        if not keys:
            return []
        prefix = self._prefix()
        full = [prefix + key for key in keys]
        self._run(lambda c: c.delete(*full), "delete_many")
        return list(keys)

    def has(self, key: str) -> bool:
        full = self._prefix() + key
        return self._run(lambda c: c.exists(full), "has")

    def clear(self) -> bool:
        """Delete the entries under this cache's key prefix, and nothing else."""
        pattern = escape_glob(self._prefix()) + "*"
        self._run(lambda c: c.delete_pattern(pattern), "clear")
        return True

    def inc(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` atomically; a missing key counts from 0."""
        full = self._prefix() + key
        return self._run(lambda c: c.incr(full, delta), "inc")

    def dec(self, key: str, delta: int = 1) -> int:
        return self.inc(key, -delta)
