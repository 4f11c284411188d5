"""pitchey-cache: a tiered cache with runtime failover for the Pitchey platform.

from pitchey_cache import Cache

async with Cache.from_env() as cache:
    await cache.set("pitch:42", {"title": "..."}, ttl=600)
    await cache.get("pitch:42")

Synchronous code (Django, Flask, scripts) uses ``SyncCache``, the same API without
``await``, driving the same async machinery on a loop thread of its own.
"""

from pitchey_cache.cache import Cache
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
from pitchey_cache.sync import SyncCache
from pitchey_cache.web.app import create_app

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
