"""The tiers, and the chain the settings ask for."""

from __future__ import annotations

from collections.abc import Callable

from pitchey_cache.clock import Clock
from pitchey_cache.config import Settings
from pitchey_cache.tiers.base import NodeHealth, PoolFigures, Tier
from pitchey_cache.tiers.cluster import ClusterTier
from pitchey_cache.tiers.memory import MemoryTier
from pitchey_cache.tiers.single import SingleTier
from pitchey_cache.tiers.upstash import UpstashTier

__all__ = [
    "ClusterTier",
    "MemoryTier",
    "NodeHealth",
    "PoolFigures",
    "SingleTier",
    "Tier",
    "UpstashTier",
    "build_chain",
]

TierFactory = Callable[[Settings, Clock], Tier]

# New tiers plug in here; the router only sees the Tier contract.
_FACTORIES: dict[str, TierFactory] = {
    "redis-cluster": lambda settings, clock: ClusterTier(settings, clock=clock),
    "native-redis": lambda settings, clock: SingleTier(settings, clock=clock),
    "upstash-redis": lambda settings, _clock: UpstashTier(settings),
    "in-memory": lambda settings, clock: MemoryTier(
        max_entries=settings.memory_max_entries,
        max_bytes=settings.memory_max_bytes,
        clock=clock,
        # Alone in the chain it is the cache; behind a remote tier, a stand-in.
        ttl_cap=None if settings.tier_chain() == ("in-memory",) else settings.fallback_ttl,
    ),
}


def build_chain(settings: Settings, clock: Clock) -> list[Tier]:
    """One tier per name of ``settings.tier_chain()``, in order."""
    return [_FACTORIES[name](settings, clock) for name in settings.tier_chain()]
