"""The in-memory tier: a bounded LRU with per-key TTL, always last in the chain."""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar, Final

from pitchey_cache.clock import Clock, SystemClock
from pitchey_cache.errors import CommandError
from pitchey_cache.globs import key_matcher
from pitchey_cache.tiers.base import PoolFigures, Tier

# CPython's small-object allocator hands out blocks in steps of 16 bytes.
_ALIGNMENT: Final = 16
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# The integers Redis's INCR accepts as stored text: no sign but "-", no leading zeros.
_REDIS_INTEGER: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")
# When the bounds are reached, expired entries are swept out before live ones are
# evicted; a sweep walks every entry, so it runs at most once per this many seconds.
_SWEEP_INTERVAL: Final = 1.0


def stored_size(obj: object) -> int:
    """Bytes ``obj`` takes in this process: its size, rounded up to the allocator's step."""
    return -(-sys.getsizeof(obj) // _ALIGNMENT) * _ALIGNMENT


# Each entry's own objects beside key and value: the (value, expiry) tuple and the
# expiry float. The table that holds them is counted as a whole (sys.getsizeof of the
# OrderedDict: its hash table, index and linked-list nodes), as it grows and shrinks.
ENTRY_OVERHEAD: Final = stored_size((b"", 0.0)) + stored_size(0.0)


def entry_cost(key: str, value: bytes) -> int:
    """What one entry's objects cost the process, the table's share aside."""
    return stored_size(key) + stored_size(value) + ENTRY_OVERHEAD


class MemoryTier(Tier):
    """Process-local storage that answers every call as a Redis server would.

    Bounded by ``max_entries`` and ``max_bytes``; the least recently used
    entries are evicted first. ``max_bytes`` counts what entries really cost
    the process: the key and value objects and the bookkeeping of each entry
    (see :func:`entry_cost`), and the table that holds them. Values are kept as exact-size copies of the
    encoded bytes, so an encoder's spare capacity isn't held, and callers
    can't mutate what is stored.

    Redis's semantics are followed where Cache users can tell: globs match
    bytes, INCR takes and yields signed 64-bit integers only, TTL rounds to
    the nearest second, and an expired key is gone for every call, counts
    included, whether or not anything read it since.
    """

    name: ClassVar[str] = "in-memory"
    distributed: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        clock: Clock | None = None,
        ttl_cap: int | None = None,
    ) -> None:
        self._max_entries = max_entries
        # CACHE_FALLBACK_TTL, when the tier stands in for a remote one: other processes
        # cannot see what this one writes here, so their views differ at most that long.
        self._ttl_cap = ttl_cap
        self._max_bytes = max_bytes
        self._clock = clock or SystemClock()
        # key -> (value, expires_at on the monotonic clock, or None for no expiry)
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._next_sweep = self._clock.monotonic()
        self.evictions = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryTier [{len(self._entries)}/{self._max_entries} entries, "
            f"{self._held()}/{self._max_bytes} bytes]>"
        )

    @property
    def entry_count(self) -> int:
        """Live entries (expired ones are swept out first)."""
        self._sweep()
        return len(self._entries)

    @property
    def byte_count(self) -> int:
        """What the live entries and their table cost, as counted against ``max_bytes``."""
        self._sweep()
        return self._held()

    def connection_pool(self) -> PoolFigures:
        return PoolFigures(total=0, active=0)

    @property
    def known_empty(self) -> bool:
        return not self._entries

    def clear(self) -> None:
        self._entries = OrderedDict()
        self._bytes = 0

    # -- internals ---------------------------------------------------------

    def _expired(self, entry: tuple[bytes, float | None], now: float) -> bool:
        return entry[1] is not None and entry[1] <= now

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._expired(entry, self._clock.monotonic()):
            self._remove(key)
            return None
        return entry

    def _held(self) -> int:
        return self._bytes + sys.getsizeof(self._entries)

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry_cost(key, entry[0])
        if not self._entries:
            # A dict never shrinks its table as keys go; an empty one can start afresh.
            self._entries = OrderedDict()
        return True

    def _sweep(self) -> None:
        """Drop every expired entry."""
        now = self._clock.monotonic()
        self._next_sweep = now + _SWEEP_INTERVAL
        for key in [k for k, entry in self._entries.items() if self._expired(entry, now)]:
            self._remove(key)

    def _over_bounds(self) -> bool:
        return len(self._entries) > self._max_entries or self._held() > self._max_bytes

    def _store(self, key: str, value: bytes, expires_at: float | None) -> None:
        self._remove(key)
        # orjson's results keep at least 4 KiB of capacity whatever their length, which
        # max_bytes can't see. Formatting makes a copy exactly as long as its content
        # (bytes(value) would return the same object), at a quarter of the cost of
        # bytes(memoryview(value)).
        value = b"%b" % value
        self._entries[key] = (value, expires_at)
        self._bytes += entry_cost(key, value)
        if self._over_bounds() and self._clock.monotonic() >= self._next_sweep:
            self._sweep()
        now = self._clock.monotonic()
        while self._entries and self._over_bounds():
            oldest, entry = next(iter(self._entries.items()))
            self._remove(oldest)
            if not self._expired(entry, now):
                self.evictions += 1

    def _expiry(self, ttl: int) -> float:
        if self._ttl_cap is not None:
            ttl = min(ttl, self._ttl_cap)
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
        # As Redis: milliseconds left, rounded half up to seconds (so 0 in the last half).
        millis = int((entry[1] - self._clock.monotonic()) * 1000)
        return (millis + 500) // 1000

    async def incr(self, key: str, amount: int) -> int:
        if type(amount) is not int or not _INT64_MIN <= amount <= _INT64_MAX:
            raise CommandError(f"the increment {amount!r} is not an integer or out of range")
        entry = self._live(key)
        current = 0
        expires_at = None
        if entry is not None:
            value, expires_at = entry
            if not _REDIS_INTEGER.fullmatch(value) or not _INT64_MIN <= int(value) <= _INT64_MAX:
                raise CommandError(f"value at {key!r} is not an integer or out of range")
            current = int(value)
        result = current + amount
        if not _INT64_MIN <= result <= _INT64_MAX:
            raise CommandError(f"increment of {key!r} would overflow a 64-bit integer")
        if expires_at is None and self._ttl_cap is not None:
            expires_at = self._expiry(self._ttl_cap)
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
        matches = key_matcher(pattern)
        now = self._clock.monotonic()
        doomed = [key for key, entry in self._entries.items() if matches(key)]
        # An expired key is removed, but not counted: Redis's SCAN never returns one.
        live = 0
        for key in doomed:
            live += not self._expired(self._entries[key], now)
            self._remove(key)
        return live
