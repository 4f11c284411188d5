"""The tiers, and the chain the settings ask for."""

from __future__ import annotations

from collections.abc import Callable

from pitchey_cache.clock import Clock
from pitchey_cache.config import Settings
from pitchey_cache.errors import ConfigError
from pitchey_cache.tiers.base import NodeHealth, PoolFigures, Tier
from pitchey_cache.tiers.cluster import ClusterTier
from pitchey_cache.tiers.memory import MemoryTier
from pitchey_cache.tiers.single import SingleTier

__all__ = [
    "ClusterTier",
    "MemoryTier",
    "NodeHealth",
    "PoolFigures",
    "SingleTier",
    "Tier",
    "build_chain",
]

TierFactory = Callable[[Settings, Clock], Tier]

# New tiers plug in here; the router only sees the Tier contract.
_FACTORIES: dict[str, TierFactory] = {
    "redis-cluster": lambda settings, clock: ClusterTier(settings, clock=clock),
    "native-redis": lambda settings, clock: SingleTier(settings, clock=clock),
    "in-memory": lambda settings, clock: MemoryTier(
        max_entries=settings.memory_max_entries, max_bytes=settings.memory_max_bytes, clock=clock
    ),
}

# The variable that put a tier in the chain, to name in an error.
_ENABLED_BY = {"upstash-redis": "UPSTASH_REDIS_REST_URL"}


def build_chain(settings: Settings, clock: Clock) -> list[Tier]:
    """One tier per name of ``settings.tier_chain()``, in order."""
    chain: list[Tier] = []
    for name in settings.tier_chain():
        factory = _FACTORIES.get(name)
        if factory is None:
            raise ConfigError(
                _ENABLED_BY.get(name, name),
                None,
                f"asks for the {name} tier, which this version of pitchey-cache does not "
                "provide yet; unset it to run on the other tiers",
            )
        chain.append(factory(settings, clock))
    return chain
