"""A Django cache backend served by pitchey-cache's failover chain.

```python
CACHES = {
    "default": {
        "BACKEND": "pitchey_cache.contrib.django.PitcheyCache",
        "TIMEOUT": 300,
        "OPTIONS": {"SERIALIZER": "json"},
    }
}
```

Settings come from the same environment variables as the rest of pitchey-cache
(REDIS_HOST, REDIS_CLUSTER_NODES, UPSTASH_REDIS_REST_URL, ...); OPTIONS may name any
of them to override it. Every alias and every thread with the same settings shares
one :class:`~pitchey_cache.SyncCache`. Keys are Django's (KEY_PREFIX, VERSION,
KEY_FUNCTION) under ``django:`` inside REDIS_KEY_PREFIX, so :meth:`clear` removes
Django's entries and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

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
from pitchey_cache.sync import SyncCache

_T = TypeVar("_T")
NAMESPACE: Final = "django:"
# OPTIONS Django's BaseCache reads for itself (culling: Redis evicts on its own).
_DJANGO_OPTIONS: Final = frozenset({"MAX_ENTRIES", "CULL_FREQUENCY"})


# Django ships no type hints, so its BaseCache is Any to mypy.
class PitcheyCache(BaseCache):  # type: ignore[misc]
    """Django's cache contract over the failover chain; see the module docstring.

    Timeouts: None keeps an entry for a century (every tier takes a TTL), 0 or less
    does not store it (``touch`` with 0 deletes it), floats are rounded up to whole
    seconds. ``incr``/``decr`` raise ValueError on a missing key and
    :class:`~pitchey_cache.CommandError` on a value that is not an integer.
    """

    def __init__(self, server: str | None, params: dict[str, Any]) -> None:
        super().__init__(params)
        if server:
            raise ImproperlyConfigured(
                "pitchey_cache.contrib.django.PitcheyCache takes no LOCATION: it reads "
                "REDIS_HOST, REDIS_CLUSTER_NODES, ... from the environment or OPTIONS"
            )
        options = dict(params.get("OPTIONS") or {})
        serializer = options.pop("SERIALIZER", Serializer.JSON)
        for name in _DJANGO_OPTIONS:
            options.pop(name, None)
        self._codec = EntryCodec(
            Serializer.parse("OPTIONS['SERIALIZER']", serializer), framework="Django"
        )
        self._sync: SyncCache = shared_sync_cache(settings_from_options(options, where="OPTIONS"))

    @property
    def sync_cache(self) -> SyncCache:
        """The shared :class:`~pitchey_cache.SyncCache` (health, stats, active tier)."""
        return self._sync

    # -- keys, timeouts, values --------------------------------------------------------

    def _key(self, key: Any, version: int | None) -> str:
        return NAMESPACE + str(self.make_and_validate_key(key, version=version))

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None:
        """Whole seconds to keep an entry; None for no expiry; 0 for do not store."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        seconds: int = math.ceil(timeout)
        return max(0, seconds)

    def _ttl(self, timeout: Any) -> int:
        seconds = self.get_backend_timeout(timeout)
        return FOREVER_SECONDS if seconds is None else seconds

    def _dump(self, value: Any) -> Any:
        return self._codec.dump(value)

    def _load(self, stored: Any, default: Any) -> Any:
        if stored is MISSING:
            return default
        value = self._codec.load(stored)
        return default if value is MISSING else value

    def _run(self, call: Callable[[Cache], Coroutine[Any, Any, _T]], what: str) -> _T:
        try:
            return self._sync.run(call, what)
        except UnsupportedValueError as exc:
            raise self._codec.hint(exc) from None

    async def _arun(self, call: Callable[[Cache], Coroutine[Any, Any, _T]], what: str) -> _T:
        try:
            return await self._sync.arun(call, what)
        except UnsupportedValueError as exc:
            raise self._codec.hint(exc) from None

    # -- the operations, each run on the cache's loop in one hop ----------------------

    @staticmethod
    async def _add(cache: Cache, key: str, value: Any, ttl: int) -> bool:
        if ttl == 0:
            # Django's contract: "added" and expired at once.
            stored = await cache.set(key, value, 1, only_if_absent=True)
            if stored:
                await cache.delete(key)
            return stored
        return await cache.set(key, value, ttl, only_if_absent=True)

    @staticmethod
    async def _set(cache: Cache, key: str, value: Any, ttl: int) -> None:
        if ttl == 0:
            await cache.delete(key)
        else:
            await cache.set(key, value, ttl)

    @staticmethod
    async def _touch(cache: Cache, key: str, ttl: int) -> bool:
        if ttl == 0:
            return await cache.delete(key) > 0
        return await cache.expire(key, ttl)

    @staticmethod
    async def _incr(cache: Cache, key: str, delta: int, shown: Any) -> int:
        if not await cache.exists(key):
            raise ValueError(f"Key '{shown}' not found")
        return await cache.incr(key, delta)

    @staticmethod
    async def _set_many(cache: Cache, items: dict[str, Any], ttl: int) -> None:
        if ttl == 0:
            await cache.delete(*items)
        else:
            await cache.set_many(items, ttl)

    # -- Django's API -----------------------------------------------------------------

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        full, data, ttl = self._key(key, version), self._dump(value), self._ttl(timeout)
        return self._run(lambda c: self._add(c, full, data, ttl), "add")

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        full, data, ttl = self._key(key, version), self._dump(value), self._ttl(timeout)
        return await self._arun(lambda c: self._add(c, full, data, ttl), "add")

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        full = self._key(key, version)
        return self._load(self._run(lambda c: c.get(full, MISSING), "get"), default)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        full = self._key(key, version)
        return self._load(await self._arun(lambda c: c.get(full, MISSING), "get"), default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        full, data, ttl = self._key(key, version), self._dump(value), self._ttl(timeout)
        self._run(lambda c: self._set(c, full, data, ttl), "set")

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        full, data, ttl = self._key(key, version), self._dump(value), self._ttl(timeout)
        await self._arun(lambda c: self._set(c, full, data, ttl), "set")

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        full, ttl = self._key(key, version), self._ttl(timeout)
        return self._run(lambda c: self._touch(c, full, ttl), "touch")

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        full, ttl = self._key(key, version), self._ttl(timeout)
        return await self._arun(lambda c: self._touch(c, full, ttl), "touch")

    def delete(self, key: Any, version: int | None = None) -> bool:
        full = self._key(key, version)
        return self._run(lambda c: c.delete(full), "delete") > 0

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        full = self._key(key, version)
        return await self._arun(lambda c: c.delete(full), "delete") > 0

    def _many_keys(self, keys: Iterable[Any], version: int | None) -> dict[str, Any]:
        return {self._key(key, version): key for key in keys}

    def _loaded_many(self, found: dict[str, Any], by_full: dict[str, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for full, stored in found.items():
            value = self._codec.load(stored)
            if value is not MISSING:
                out[by_full[full]] = value
        return out

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        by_full = self._many_keys(keys, version)
        if not by_full:
            return {}
        found = self._run(lambda c: c.get_many(list(by_full)), "get_many")
        return self._loaded_many(found, by_full)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        by_full = self._many_keys(keys, version)
        if not by_full:
            return {}
        found = await self._arun(lambda c: c.get_many(list(by_full)), "get_many")
        return self._loaded_many(found, by_full)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        full = self._key(key, version)
        return self._run(lambda c: c.exists(full), "has_key")

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        full = self._key(key, version)
        return await self._arun(lambda c: c.exists(full), "has_key")

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        full = self._key(key, version)
        return self._run(lambda c: self._incr(c, full, delta, key), "incr")

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        full = self._key(key, version)
        return await self._arun(lambda c: self._incr(c, full, delta, key), "incr")

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return self.incr(key, -delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return await self.aincr(key, -delta, version)

    def _many_items(self, data: Mapping[Any, Any], version: int | None) -> dict[str, Any]:
        return {self._key(key, version): self._dump(value) for key, value in data.items()}

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        items, ttl = self._many_items(data, version), self._ttl(timeout)
        if items:
            self._run(lambda c: self._set_many(c, items, ttl), "set_many")
        return []

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        items, ttl = self._many_items(data, version), self._ttl(timeout)
        if items:
            await self._arun(lambda c: self._set_many(c, items, ttl), "set_many")
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        full = list(self._many_keys(keys, version))
        if full:
            self._run(lambda c: c.delete(*full), "delete_many")

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        full = list(self._many_keys(keys, version))
        if full:
            await self._arun(lambda c: c.delete(*full), "delete_many")

    def clear(self) -> None:
        """Delete every Django entry under REDIS_KEY_PREFIX (``django:*``), whatever its
        KEY_PREFIX, as Django's own backends clear their whole store; never anything
        outside that namespace, never FLUSHDB."""
        self._run(lambda c: c.delete_pattern(NAMESPACE + "*"), "clear")

    async def aclear(self) -> None:
        await self._arun(lambda c: c.delete_pattern(NAMESPACE + "*"), "clear")

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request; the shared cache stays open."""

    async def aclose(self, **kwargs: Any) -> None:
        """As :meth:`close`."""
