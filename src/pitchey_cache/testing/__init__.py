"""Real backends and real faults for your own tests.

Start a redis-server, a Redis Cluster or Upstash's REST API on free loopback ports,
get the :class:`~pitchey_cache.Settings` (or a :class:`~pitchey_cache.Cache`) that
reach them, and break them while your code runs: ``kill()`` (``kill -9``),
``freeze()``/``thaw()`` (SIGSTOP/SIGCONT), ``restart()``, and for the gateway
``fail()`` (HTTP 500) and ``hang()``::

    from pitchey_cache.testing import local_redis, wait_for_tier

    with local_redis() as redis:
        async with redis.cache() as cache:
            redis.kill()
            await my_code(cache)  # served by the in-memory tier, no exception
            redis.restart()
            await wait_for_tier(cache, "native-redis")

With pytest, the same come as fixtures (``pitchey_redis``, ``pitchey_cluster``,
``pitchey_upstash``) from the plugin this package registers; a test that does not
name them pays nothing. Needs ``redis-server`` on PATH (and ``redis-cli`` for a
cluster).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pitchey_cache.testing._backends import (
        FAILOVER_TIMINGS,
        GATEWAY_REDIS_TIMEOUT_MS,
        LocalRedis,
        LocalRedisCluster,
        LocalUpstash,
        local_cluster,
        local_redis,
        local_upstash,
        upstash_gateway_app,
        wait_for_tier,
    )
    from pitchey_cache.testing._http import AppServer, Exchange, Fault, GatewayTap

# Loaded on first use: pytest imports this package for the plugin in every run of a
# project that has pitchey-cache installed, and most runs use none of it.
_HTTP = {"AppServer", "Exchange", "Fault", "GatewayTap"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'pitchey_cache.testing' has no attribute {name!r}")
    module = "_http" if name in _HTTP else "_backends"
    value = getattr(importlib.import_module(f"pitchey_cache.testing.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FAILOVER_TIMINGS",
    "GATEWAY_REDIS_TIMEOUT_MS",
    "AppServer",
    "Exchange",
    "Fault",
    "GatewayTap",
    "LocalRedis",
    "LocalRedisCluster",
    "LocalUpstash",
    "local_cluster",
    "local_redis",
    "local_upstash",
    "upstash_gateway_app",
    "wait_for_tier",
]
