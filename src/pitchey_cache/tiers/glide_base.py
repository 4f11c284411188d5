"""What the two Redis tiers share: valkey-glide clients, calls, and error mapping."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

import glide

from pitchey_cache.clock import Clock, SystemClock
from pitchey_cache.config import Settings
from pitchey_cache.errors import CacheError, CommandError, TierUnavailable
from pitchey_cache.tiers.base import PoolFigures, Tier

_T = TypeVar("_T")
_C = TypeVar("_C", glide.GlideClient, glide.GlideClusterClient)

# Redis replies that are the caller's mistake, not an outage: the same call
# would fail on any tier, so it is raised to the caller and not failed over.
_CALLER_ERRORS = ("WRONGTYPE", "not an integer", "overflow")
# Replies after which the same command, sent again shortly, can succeed.
_TRANSIENT_ERRORS = ("LOADING", "TRYAGAIN", "MASTERDOWN", "BUSY")

SCAN_BATCH = 1000


def quiet_glide_logs() -> None:
    """Keep glide's own console logger to errors unless the application set one up.

    Glide logs a warning for every failed reconnect attempt; during an outage
    that is a line per backoff step per connection, and our own events already
    say what happened.
    """
    glide.Logger.init(glide.LogLevel.ERROR)


class _Connection(Generic[_C]):
    """One multiplexed glide client, with what we know of it."""

    __slots__ = ("client", "connected", "in_flight")

    def __init__(self, client: _C) -> None:
        self.client: _C = client
        self.in_flight = 0
        # Unknown until the first call or probe; counted as not connected.
        self.connected = False


class GlideTier(Tier, Generic[_C]):
    """A Redis tier driven by REDIS_CONNECTION_POOL_SIZE glide clients, taken in turn.

    Each glide client multiplexes one TCP connection per node. Clients
    connect lazily, so creating a tier never blocks the event loop, and glide
    reconnects in the background after an outage. Subclasses create the
    clients and say how to probe and scan.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._pool: list[_Connection[_C]] = []
        self._turn = itertools.count()

    def __repr__(self) -> str:
        figures = self.connection_pool()
        return (
            f"<{type(self).__name__} {self.describe()} [{figures.total} connected, "
            f"{figures.active} active of {len(self._pool)}]>"
        )

    def connection_pool(self) -> PoolFigures:
        return PoolFigures(
            total=sum(1 for c in self._pool if c.connected),
            active=sum(1 for c in self._pool if c.in_flight),
        )

    def _tls(self) -> glide.TlsAdvancedConfiguration | None:
        """REDIS_TLS_* as glide's TLS options; None leaves glide's defaults (system store)."""
        s = self._settings
        if not s.tls_enabled:
            return None
        return glide.TlsAdvancedConfiguration(
            use_insecure_tls=s.tls_insecure,
            root_pem_cacerts=s.tls_ca_cert.read_bytes() if s.tls_ca_cert else None,
            client_cert_pem=s.tls_cert.read_bytes() if s.tls_cert else None,
            client_key_pem=s.tls_key.read_bytes() if s.tls_key else None,
        )

    def _backoff(self) -> glide.BackoffStrategy:
        # Cap reconnect backoff at 800 ms, so failback after a long outage is
        # not delayed by an ever-growing wait.
        return glide.BackoffStrategy(num_of_retries=3, factor=100, exponent_base=2)

    @abc.abstractmethod
    async def _create_client(self) -> _C:
        """One lazily connecting glide client."""

    async def start(self) -> None:
        quiet_glide_logs()
        if self._pool:
            return
        for _ in range(self._settings.connection_pool_size):
            self._pool.append(_Connection(await self._create_client()))

    async def close(self) -> None:
        pool, self._pool = self._pool, []
        for connection in pool:
            # Closing a client the driver already closed is not an error here.
            with contextlib.suppress(glide.GlideError):
                await connection.client.close()

    def translate(self, exc: Exception) -> CacheError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, glide.TimeoutError):
            return TierUnavailable(self.name, f"timed out ({reason})")
        if isinstance(exc, glide.ConnectionError):
            return TierUnavailable(self.name, f"disconnected ({reason})", retryable=True)
        if isinstance(exc, glide.RequestError) and not isinstance(exc, glide.ClosingError):
            if any(marker in reason for marker in _CALLER_ERRORS):
                return CommandError(reason)
            transient = any(reason.startswith(marker) for marker in _TRANSIENT_ERRORS)
            return TierUnavailable(self.name, reason, retryable=transient)
        return TierUnavailable(self.name, f"{type(exc).__name__}: {reason}")

    async def _call(self, command: Callable[[_C], Awaitable[_T]]) -> _T:
        if not self._pool:
            raise TierUnavailable(self.name, "not started")
        connection = self._pool[next(self._turn) % len(self._pool)]
        connection.in_flight += 1
        try:
            result = await command(connection.client)
        except glide.GlideError:
            connection.connected = False
            raise
        finally:
            connection.in_flight -= 1
        connection.connected = True
        return result

    async def _ping_clients(self) -> None:
        """PING through every client of the pool; raise the first failure."""
        if not self._pool:
            raise TierUnavailable(self.name, "not started")

        async def probe(connection: _Connection[_C]) -> None:
            try:
                await connection.client.ping()
            except glide.GlideError:
                connection.connected = False
                raise
            connection.connected = True

        results = await asyncio.gather(*(probe(c) for c in self._pool), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda c: c.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._call(lambda c: c.mget(list(keys)))

    async def set(self, key: str, value: bytes, ttl: int, only_if_absent: bool) -> bool:
        condition = glide.ConditionalChange.ONLY_IF_DOES_NOT_EXIST if only_if_absent else None
        expiry = glide.ExpirySet(glide.ExpiryType.SEC, ttl)
        reply = await self._call(lambda c: c.set(key, value, condition, expiry))
        return reply is not None

    @abc.abstractmethod
    def _pipeline(self) -> glide.Batch | glide.ClusterBatch:
        """A non-atomic batch for this kind of client."""

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        batch = self._pipeline()
        expiry = glide.ExpirySet(glide.ExpiryType.SEC, ttl)
        for key, value in items.items():
            batch.set(key, value, expiry=expiry)
        await self._call(lambda c: self._exec(c, batch))

    async def delete(self, keys: Sequence[str]) -> int:
        return await self._call(lambda c: c.delete(list(keys)))

    async def exists(self, keys: Sequence[str]) -> int:
        return await self._call(lambda c: c.exists(list(keys)))

    async def expire(self, key: str, ttl: int) -> bool:
        return await self._call(lambda c: c.expire(key, ttl))

    async def ttl(self, key: str) -> int:
        return await self._call(lambda c: c.ttl(key))

    async def incr(self, key: str, amount: int) -> int:
        return await self._call(lambda c: c.incrby(key, amount))

    @abc.abstractmethod
    async def _exec(self, client: _C, batch: glide.Batch | glide.ClusterBatch) -> object:
        """Run a pipeline, raising the first error."""
