"""``@cache.cached(...)``: an async function whose results are kept by ``get_or_set``."""

from __future__ import annotations

import functools
import inspect
import string
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeVar, overload

import orjson

from pitchey_cache.errors import CacheError

if TYPE_CHECKING:
    from pitchey_cache.cache import Cache
    from pitchey_cache.loading import LoadOptions

P = ParamSpec("P")
R = TypeVar("R")


class CachedFunction(Generic[P, R]):
    """Calls ``get_or_set(key, lambda: fn(...))`` with the key built from the arguments.

    The key is ``template.format(**arguments)`` when a template is given
    (``"pitch:{pitch_id}"``; attribute access such as ``{self.id}`` works),
    otherwise the function's module and qualified name followed by its
    arguments as JSON, defaults applied, so ``f(1)`` and ``f(pitch_id=1)``
    share an entry. Without a template every argument must be a JSON value.
    """

    # Copied from the function by functools.update_wrapper.
    __name__: str
    __qualname__: str

    def __init__(
        self,
        cache: Cache,
        fn: Callable[P, Awaitable[R]],
        template: str | None,
        options: LoadOptions,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise CacheError(f"cached() wraps `async def` functions; {fn.__qualname__} is not one")
        self._cache = cache
        self._fn = fn
        self._signature = inspect.signature(fn)
        self._template = template
        self._options = options
        self._prefix = f"{fn.__module__}.{fn.__qualname__}:"
        if template is not None:
            _check_template(template, self._signature, fn.__qualname__)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<cached {self._fn.__qualname__} key={self._template or self._prefix + '...'!r}>"

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of a call with these arguments."""
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if self._template is not None:
            return self._template.format(**bound.arguments)
        for name, value in bound.arguments.items():
            try:
                orjson.dumps(value)
            except TypeError:
                raise CacheError(
                    f"cannot build a cache key for {self._fn.__qualname__} from argument "
                    f"{name!r} of type {type(value).__name__}: pass key='...' to cached()"
                ) from None
        return self._prefix + orjson.dumps(bound.arguments).decode()

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        o = self._options
        result: R = await self._cache.get_or_set(
            self.key(*args, **kwargs),
            lambda: self._fn(*args, **kwargs),
            o.ttl,
            lock=o.lock,
            lock_ttl=o.lock_ttl,
            early_refresh=o.early_refresh,
            stale_if_error=o.stale_if_error,
            cache_none=o.cache_none,
            tags=o.tags,
        )
        return result

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the entry of a call with these arguments; whether there was one."""
        return bool(await self._cache.delete(self.key(*args, **kwargs)))

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundCachedMethod: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        """On an instance, a method: ``service.load(1)``, ``service.load.invalidate(1)``."""
        if instance is None:
            return self
        return BoundCachedMethod(self, instance)


class BoundCachedMethod:
    """A cached method bound to its instance, which is passed as the first argument."""

    def __init__(self, function: CachedFunction[Any, Any], instance: object) -> None:
        self._function = function
        self._instance = instance

    def __repr__(self) -> str:
        return f"<bound {self._function!r} of {self._instance!r}>"

    def key(self, *args: Any, **kwargs: Any) -> str:
        return self._function.key(self._instance, *args, **kwargs)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._function(self._instance, *args, **kwargs)

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return await self._function.invalidate(self._instance, *args, **kwargs)


def _check_template(template: str, signature: inspect.Signature, name: str) -> None:
    """Refuse at decoration time a template that names no parameter of the function."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise CacheError(f"cached(key={template!r}) for {name}: {exc}") from None
    for field in fields:
        root = field.split(".", 1)[0].split("[", 1)[0]
        if root not in signature.parameters:
            raise CacheError(
                f"cached(key={template!r}) for {name}: {{{field}}} is not a parameter "
                f"(parameters: {', '.join(signature.parameters) or 'none'})"
            )


def decorator(
    cache: Cache, template: str | None, options: LoadOptions
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    def wrap(fn: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        return CachedFunction(cache, fn, template, options)

    return wrap
