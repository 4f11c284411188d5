"""The in-memory tier: a bounded LRU with per-key TTL, always last in the chain."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar

from pitchey_cache.clock import Clock, SystemClock
from pitchey_cache.errors import CommandError
from pitchey_cache.globs import glob_regex
from pitchey_cache.tiers.base import PoolFigures, Tier

# Per-entry bookkeeping beyond key and value bytes (the tuple, the dict slot).
_ENTRY_OVERHEAD = 64


class MemoryTier(Tier):
    """Process-local storage with Redis-like semantics.

    Bounded by ``max_entries`` and ``max_bytes`` (key + value + a fixed
    overhead per entry); the least recently used entries are evicted first.
    Values are the encoded bytes, so callers can't mutate what is stored.
    Expired entries are dropped when touched or when eviction reaches them.
    """

    name: ClassVar[str] = "in-memory"
    distributed: ClassVar[bool] = False

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock | None = None) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock or SystemClock()
        # key -> (value, expires_at on the monotonic clock, or None for no expiry)
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryTier [{len(self._entries)}/{self._max_entries} entries, "
            f"{self._bytes}/{self._max_bytes} bytes]>"
        )

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    @property
    def byte_count(self) -> int:
        return self._bytes

    def connection_pool(self) -> PoolFigures:
        return PoolFigures(total=0, active=0)

    @property
    def known_empty(self) -> bool:
        return not self._entries

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    # -- internals ---------------------------------------------------------

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at = entry[1]
        if expires_at is not None and expires_at <= self._clock.monotonic():
            self._remove(key)
            return None
        return entry

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= len(key) + len(entry[0]) + _ENTRY_OVERHEAD
        return True

    def _store(self, key: str, value: bytes, expires_at: float | None) -> None:
        self._remove(key)
        self._entries[key] = (value, expires_at)
        self._bytes += len(key) + len(value) + _ENTRY_OVERHEAD
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1

    def _expiry(self, ttl: int) -> float:
        return self._clock.monotonic() + ttl

    # -- the contract ------------------------------------------------------

    async def ping(self, skip: Collection[str] = frozenset()) -> Mapping[str, str | None]:  # noqa: ARG002 - no nodes
        return {}

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: int, only_if_absent: bool) -> bool:
        if only_if_absent and self._live(key) is not None:
            return False
        self._store(key, value, self._expiry(ttl))
        return True

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        expires_at = self._expiry(ttl)
        for key, value in items.items():
            self._store(key, value, expires_at)

    async def delete(self, keys: Sequence[str]) -> int:
        return sum(1 for key in keys if self._live(key) is not None and self._remove(key))

    async def exists(self, keys: Sequence[str]) -> int:
        return sum(1 for key in keys if self._live(key) is not None)

    async def expire(self, key: str, ttl: int) -> bool:
        entry = self._live(key)
        if entry is None:
            return False
        self._entries[key] = (entry[0], self._expiry(ttl))
        return True

    async def ttl(self, key: str) -> int:
        entry = self._live(key)
        if entry is None:
            return -2
        if entry[1] is None:
            return -1
        return max(0, math.ceil(entry[1] - self._clock.monotonic()))

    async def incr(self, key: str, amount: int) -> int:
        entry = self._live(key)
        current = 0
        expires_at = None
        if entry is not None:
            value, expires_at = entry
            if not re.fullmatch(rb"-?[0-9]+", value):
                raise CommandError(f"value at {key!r} is not an integer")
            current = int(value)
        result = current + amount
        if not -(2**63) <= result < 2**63:
            raise CommandError(f"increment of {key!r} would overflow a 64-bit integer")
        self._store(key, str(result).encode(), expires_at)
        return result

    async def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        if self._live(key) is not None:
            return False
        self._store(key, token.encode(), self._clock.monotonic() + ttl_ms / 1000)
        return True

    async def release_lock(self, key: str, token: str) -> bool:
        entry = self._live(key)
        return entry is not None and entry[0] == token.encode() and self._remove(key)

    async def delete_matching(self, pattern: str) -> int:
        matcher = glob_regex(pattern)
        doomed = [key for key in self._entries if matcher.fullmatch(key)]
        for key in doomed:
            self._remove(key)
        return len(doomed)
