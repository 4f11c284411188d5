"""What the two Redis tiers share: valkey-glide clients, calls, and error mapping."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Awaitable, Sequence
from typing import ClassVar, Generic, TypeVar

import glide

from pitchey_cache.clock import Clock, SystemClock
from pitchey_cache.config import NodeAddress, Settings
from pitchey_cache.errors import CacheError, CommandError, TierUnavailable
from pitchey_cache.tiers.base import PoolFigures, Tier
from pitchey_cache.tiers.link import Credentials, NodeLink
from pitchey_cache.tiers.tls_diagnosis import diagnose_tls

_T = TypeVar("_T")
_C = TypeVar("_C", glide.GlideClient, glide.GlideClusterClient)

# Redis replies that are the caller's mistake, not an outage: the same call
# would fail on any tier, so it is raised to the caller and not failed over.
_CALLER_ERRORS = ("WRONGTYPE", "not an integer", "overflow")
# Replies after which the same command, sent again shortly, can succeed.
_TRANSIENT_ERRORS = ("LOADING", "TRYAGAIN", "MASTERDOWN", "BUSY")
# How glide's standalone and cluster clients say they could open no connection.
_CONNECT_FAILURES = ("connect failed", "Failed to create initial connections")

# Redirects glide surfaced instead of following (seen with glide 2.6 under concurrent
# traffic on a slot being migrated: "... - Moved: 8999 127.0.0.1:7002", "- TryAgain:"):
# the command did not run, the node is healthy, and the same command soon routes right.
_REDIRECTS = ("- Moved:", "- Ask:", "TryAgain", "TRYAGAIN", "MOVED ", "ASK ")

SCAN_BATCH = 1000

# Compare-and-delete, so only a lock's owner releases it (an expired lock may
# already belong to another caller). Glide sends EVALSHA and loads it when missing.
# (glide's Script.__init__ is unannotated.)
RELEASE_LOCK = glide.Script(  # type: ignore[no-untyped-call]
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def quiet_glide_logs() -> None:
    """Keep glide's own console logger to errors unless the application set one up.

    Glide logs a warning for every failed reconnect attempt; during an outage
    that is a line per backoff step per connection, and our own events already
    say what happened.
    """
    glide.Logger.init(glide.LogLevel.ERROR)


class GlideTier(Tier, Generic[_C]):
    """A Redis tier driven by one valkey-glide client.

    Glide multiplexes every request over one TCP connection per node, and
    one client is what measured fastest: several clients taken in turn pay
    more system calls and context switches per operation (``make bench``
    prints the ratio, "raw glide N clients / 1 client"). So
    REDIS_CONNECTION_POOL_SIZE does not open more glide connections (it is
    the Upstash tier's HTTP connection limit). The client connects lazily, so
    creating a tier never blocks the event loop, and glide reconnects in the
    background after an outage. Subclasses create the client and say how to
    probe and scan.
    """

    # Whether the nodes are cluster members: their heartbeat asks CLUSTER INFO.
    cluster_member: ClassVar[bool] = False

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._client: _C | None = None
        self._in_flight = 0
        # Whether the last call or probe got an answer; False until one did.
        self._connected = False
        self._expiries: dict[int, glide.ExpirySet] = {}

    def __repr__(self) -> str:
        state = "connected" if self._connected else "not connected"
        return f"<{type(self).__name__} {self.describe()} [{state}, {self._in_flight} in flight]>"

    def connection_pool(self) -> PoolFigures:
        connected = 1 if self._connected else 0
        return PoolFigures(total=connected, active=min(connected, self._in_flight))

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

    @property
    def has_links(self) -> bool:
        return True

    @property
    def request_deadline(self) -> float:
        # Glide's request timeout bounds a request, its retries included; a request
        # waiting for a connection is counted as one attempt is (see the README).
        s = self._settings
        return max(s.command_timeout_ms, s.connect_timeout_ms) / 1000

    @abc.abstractmethod
    def _credentials(self) -> Credentials:
        """The tier's AUTH settings, and the variables that hold them."""

    async def open_link(self, address: str, within: float) -> NodeLink:
        host, _, port = address.rpartition(":")
        return await NodeLink.open(
            NodeAddress(host, int(port)),
            self._settings,
            self._credentials(),
            within=within,
            cluster=self.cluster_member,
        )

    @abc.abstractmethod
    async def _create_client(self) -> _C:
        """One lazily connecting glide client."""

    async def start(self) -> None:
        quiet_glide_logs()
        if self._client is None:
            self._client = await self._create_client()

    async def close(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            # Closing a client the driver already closed is not an error here.
            with contextlib.suppress(glide.GlideError):
                await client.close()

    def translate(self, exc: Exception) -> CacheError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, glide.TimeoutError):
            detail = "" if reason.lower() == "timed out" else f" ({reason})"
            return TierUnavailable(self.name, f"timed out{detail}")
        if isinstance(exc, glide.ConnectionError):
            return TierUnavailable(self.name, f"disconnected ({reason})", retryable=True)
        if isinstance(exc, glide.RequestError) and not isinstance(exc, glide.ClosingError):
            if any(marker in reason for marker in _CALLER_ERRORS):
                return CommandError(reason)
            if any(marker in reason for marker in _REDIRECTS):
                return TierUnavailable(self.name, reason, retryable=True, node_fault=False)
            transient = any(reason.startswith(marker) for marker in _TRANSIENT_ERRORS)
            return TierUnavailable(self.name, reason, retryable=transient)
        return TierUnavailable(self.name, f"{type(exc).__name__}: {reason}")

    async def _raise_tls_problem(
        self, error: TierUnavailable, addresses: Sequence[NodeAddress]
    ) -> None:
        """After a failed connect, raise the TLS problem behind it, if there is one.

        Glide reports a failed TLS handshake, and plaintext or TLS sent to the
        wrong kind of port, only as a connect failure ("timed out"), so a probe
        asks the servers itself (see ``tls_diagnosis``), for at most the shorter
        of the two timeouts. Other failures are left to ``translate``.
        """
        exc = error.__cause__
        if isinstance(exc, glide.TimeoutError) or not any(
            marker in str(exc) for marker in _CONNECT_FAILURES
        ):
            return
        s = self._settings
        timeout = min(s.connect_timeout_ms, s.command_timeout_ms) / 1000
        problem = await diagnose_tls(addresses, s, within=timeout)
        if problem is not None:
            raise TierUnavailable(self.name, problem) from exc

    def _expiry(self, ttl: int) -> glide.ExpirySet:
        # Building an ExpirySet costs about a microsecond; a cache uses few TTLs.
        expiry = self._expiries.get(ttl)
        if expiry is None:
            if len(self._expiries) > 1000:  # noqa: PLR2004 - a bound, not a tuning knob
                self._expiries.clear()
            expiry = self._expiries[ttl] = glide.ExpirySet(glide.ExpiryType.SEC, ttl)
        return expiry

    async def _call(self, command: Awaitable[_T]) -> _T:
        """Await one driver call, keeping the in-flight and connected figures true.

        This is the tier's edge: a driver error leaves it as a ``CacheError``.
        """
        self._in_flight += 1
        try:
            result = await command
        except glide.GlideError as exc:
            error = self.translate(exc)
            # A command refused for the caller's reasons says nothing of the link.
            if not isinstance(error, CommandError):
                self._connected = False
            raise error from exc
        finally:
            self._in_flight -= 1
        self._connected = True
        return result

    @property
    def client(self) -> _C:
        client = self._client
        if client is None:
            raise TierUnavailable(self.name, "not started")
        return client

    async def get(self, key: str) -> bytes | None:
        return await self._call(self.client.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._call(self.client.mget(list(keys)))

    async def set(self, key: str, value: bytes, ttl: int, only_if_absent: bool) -> bool:
        condition = glide.ConditionalChange.ONLY_IF_DOES_NOT_EXIST if only_if_absent else None
        reply = await self._call(self.client.set(key, value, condition, self._expiry(ttl)))
        return reply is not None

    async def delete(self, keys: Sequence[str]) -> int:
        return await self._call(self.client.delete(list(keys)))

    async def exists(self, keys: Sequence[str]) -> int:
        return await self._call(self.client.exists(list(keys)))

    async def expire(self, key: str, ttl: int) -> bool:
        return await self._call(self.client.expire(key, ttl))

    async def ttl(self, key: str) -> int:
        return await self._call(self.client.ttl(key))

    async def incr(self, key: str, amount: int) -> int:
        return await self._call(self.client.incrby(key, amount))

    async def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        expiry = glide.ExpirySet(glide.ExpiryType.MILLSEC, ttl_ms)
        condition = glide.ConditionalChange.ONLY_IF_DOES_NOT_EXIST
        reply = await self._call(self.client.set(key, token, condition, expiry))
        return reply is not None

    async def release_lock(self, key: str, token: str) -> bool:
        reply = await self._call(self.client.invoke_script(RELEASE_LOCK, keys=[key], args=[token]))
        return bool(reply == 1)
