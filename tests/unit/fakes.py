"""Test doubles for the unit tests: a clock moved by hand and a tier that fails on demand."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from pitchey_cache.errors import CommandError, TierUnavailable
from pitchey_cache.globs import key_matcher
from pitchey_cache.tiers.base import NodeHealth, PoolFigures, Tier

if TYPE_CHECKING:
    from pitchey_cache.clock import Clock

# The guide's sample timestamp, so health bodies read like the guide's.
_WALL_START = datetime(2024, 10, 24, 12, 0, tzinfo=UTC)


class FakeClock:
    """A :class:`~pitchey_cache.clock.Clock` that only moves when a test (or a sleep) moves it.

    ``sleep`` advances the clock by the requested time and yields to the event
    loop once, so a retry delay costs no real time but is still visible in
    ``monotonic()`` and in ``slept``.

    A background loop that sleeps forever between rounds (the health checker)
    would, with that rule, jump the clock ahead on every yield of the test. Sleeps
    of at least ``park_sleeps_from`` seconds are therefore *parked* instead: they
    wait until the test advances the clock past their end with :meth:`advance`.
    """

    def __init__(self, *, start: float = 1_000.0, park_sleeps_from: float | None = None) -> None:
        self._start = start
        self._monotonic = start
        self._park_sleeps_from = park_sleeps_from
        self._parked: list[tuple[float, asyncio.Future[None]]] = []
        self.slept: list[float] = []

    def __repr__(self) -> str:
        return f"<FakeClock [t={self._monotonic - self._start:g}s, {len(self._parked)} parked]>"

    def monotonic(self) -> float:
        return self._monotonic

    def now(self) -> datetime:
        return _WALL_START + timedelta(seconds=self._monotonic - self._start)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the parked sleeps whose end has come."""
        self._monotonic += seconds
        still_parked: list[tuple[float, asyncio.Future[None]]] = []
        for deadline, waiter in self._parked:
            if waiter.done():
                continue
            if deadline <= self._monotonic:
                waiter.set_result(None)
            else:
                still_parked.append((deadline, waiter))
        self._parked = still_parked

    async def sleep(self, seconds: float) -> None:
        if self._park_sleeps_from is not None and seconds >= self._park_sleeps_from:
            waiter = asyncio.get_running_loop().create_future()
            self._parked.append((self._monotonic + seconds, waiter))
            await waiter
            return
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


class FakeTier(Tier):
    """A dict-backed remote tier whose failures a test switches on and off.

    - ``down``: every call, ``ping`` included, raises ``TierUnavailable(name, "down")``,
      retryable when ``retryable`` is set;
    - ``failing``: names of methods that fail that way even while the tier is up;
    - ``raise_instead``: raise this (a driver's own exception) instead of TierUnavailable;
    - ``hang``: every call waits until ``hang`` is cleared with :meth:`release`;
    - ``gates``: per method, an event the call waits for before doing anything;
    - ``deadline``: how long a failed write may still land (``request_deadline``).

    ``calls`` counts every call per method, failed ones included; ``deleted_patterns``
    lists the patterns given to ``delete_matching``. Keys never expire: TTLs are
    only remembered, for ``ttl()``.

    Build instances with :func:`fake_tier`, which gives each its tier name.
    """

    name: ClassVar[str] = "fake-remote"
    distributed: ClassVar[bool] = True

    def __init__(self, *, address: str = "fake-redis.internal:6379") -> None:
        self.data: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}
        self.node = NodeHealth(address=address)
        self.down = False
        self.retryable = False
        # How long a failed write may still land here (Tier.request_deadline).
        self.deadline = 0.0
        self.failing: set[str] = set()
        self.raise_instead: Exception | None = None
        self.hang = False
        self._released = asyncio.Event()
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: Counter[str] = Counter()
        self.deleted_patterns: list[str] = []
        self.started = False
        self.closed = False

    def __repr__(self) -> str:
        state = "down" if self.down else "up"
        return f"<FakeTier {self.name} [{state}, {len(self.data)} keys, calls={dict(self.calls)}]>"

    def release(self) -> None:
        """End a hang: calls waiting now go on."""
        self.hang = False
        self._released.set()

    async def _enter(self, method: str) -> None:
        self.calls[method] += 1
        gate = self.gates.get(method)
        if gate is not None:
            await gate.wait()
        if self.hang:
            await self._released.wait()
        if self.down or method in self.failing:
            if self.raise_instead is not None:
                raise self.raise_instead
            raise TierUnavailable(self.name, "down", retryable=self.retryable)

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return (self.node,)

    @property
    def request_deadline(self) -> float:
        return self.deadline

    def connection_pool(self) -> PoolFigures:
        return PoolFigures(total=2, active=0)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def ping(self, skip: Collection[str] = frozenset()) -> Mapping[str, str | None]:
        if self.node.address in skip:
            return {}
        await self._enter("ping")
        return {self.node.address: None}

    async def get(self, key: str) -> bytes | None:
        await self._enter("get")
        return self.data.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        await self._enter("get_many")
        return [self.data.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: int, only_if_absent: bool) -> bool:
        await self._enter("set")
        if only_if_absent and key in self.data:
            return False
        self.data[key] = value
        self.ttls[key] = ttl
        return True

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        await self._enter("set_many")
        for key, value in items.items():
            self.data[key] = value
            self.ttls[key] = ttl

    async def delete(self, keys: Sequence[str]) -> int:
        await self._enter("delete")
        removed = 0
        for key in keys:
            if self.data.pop(key, None) is not None:
                self.ttls.pop(key, None)
                removed += 1
        return removed

    async def exists(self, keys: Sequence[str]) -> int:
        await self._enter("exists")
        return sum(1 for key in keys if key in self.data)

    async def expire(self, key: str, ttl: int) -> bool:
        await self._enter("expire")
        if key not in self.data:
            return False
        self.ttls[key] = ttl
        return True

    async def ttl(self, key: str) -> int:
        await self._enter("ttl")
        if key not in self.data:
            return -2
        return self.ttls.get(key, -1)

    async def incr(self, key: str, amount: int) -> int:
        await self._enter("incr")
        raw = self.data.get(key, b"0")
        try:
            value = int(raw)
        except ValueError:
            raise CommandError("ERR value is not an integer or out of range") from None
        value += amount
        self.data[key] = str(value).encode()
        return value

    async def delete_matching(self, pattern: str) -> int:
        await self._enter("delete_matching")
        self.deleted_patterns.append(pattern)
        matches = key_matcher(pattern)
        doomed = [key for key in self.data if matches(key)]
        for key in doomed:
            del self.data[key]
            self.ttls.pop(key, None)
        return len(doomed)

    async def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        # Locks never expire here either: a test ends them by releasing them.
        await self._enter("acquire_lock")
        if key in self.data:
            return False
        self.data[key] = token.encode()
        self.ttls[key] = max(1, ttl_ms // 1000)
        return True

    async def release_lock(self, key: str, token: str) -> bool:
        await self._enter("release_lock")
        if self.data.get(key) != token.encode():
            return False
        del self.data[key]
        self.ttls.pop(key, None)
        return True


def fake_tier(
    name: str = "native-redis",
    *,
    distributed: bool = True,
    address: str = "fake-redis.internal:6379",
) -> FakeTier:
    """A FakeTier the router sees as tier ``name`` (``name`` is a class attribute of tiers)."""

    class NamedFakeTier(FakeTier):
        pass

    NamedFakeTier.name = name
    NamedFakeTier.distributed = distributed
    NamedFakeTier.__qualname__ = f"FakeTier[{name}]"
    return NamedFakeTier(address=address)


if TYPE_CHECKING:
    # FakeClock must keep satisfying the Clock protocol the library takes.
    _CLOCK_CONFORMS: Clock = FakeClock()
