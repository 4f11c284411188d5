"""pitchey-cache: a tiered cache with runtime failover for the Pitchey platform.

from pitchey_cache import Cache

async with Cache.from_env() as cache:
    await cache.set("pitch:42", {"title": "..."}, ttl=600)
    await cache.get("pitch:42")

Synchronous code (Django, Flask, scripts) uses ``SyncCache``, the same API without
``await``, driving the same async machinery on a loop thread of its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pitchey_cache.config import NodeAddress, Secret, Settings
from pitchey_cache.errors import (
    CacheError,
    CommandError,
    ConfigError,
    InvalidKeyError,
    TierUnavailable,
    UnsupportedValueError,
    ValueTooLargeError,
)

if TYPE_CHECKING:
    from pitchey_cache.cache import Cache
    from pitchey_cache.sync import SyncCache
    from pitchey_cache.web.app import create_app

# Loaded on first use: `Cache` brings the Redis driver, `create_app` the web framework.
# So `import pitchey_cache` (and the pytest plugin, which pytest loads in every run of
# a project that has this package installed) costs only the settings and the errors.
_LAZY = {
    "Cache": "pitchey_cache.cache",
    "SyncCache": "pitchey_cache.sync",
    "create_app": "pitchey_cache.web.app",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pitchey_cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Cache",
    "CacheError",
    "CommandError",
    "ConfigError",
    "InvalidKeyError",
    "NodeAddress",
    "Secret",
    "Settings",
    "SyncCache",
    "TierUnavailable",
    "UnsupportedValueError",
    "ValueTooLargeError",
    "create_app",
]
