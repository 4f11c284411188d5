"""The upstash-redis tier: Upstash Redis over its REST API, through httpx."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import httpx

from pitchey_cache.config import Settings
from pitchey_cache.errors import CacheError, CommandError, TierUnavailable
from pitchey_cache.tiers.base import NodeHealth, PoolFigures, Tier, delete_by_scan

# Stored values are bytes, but Upstash's JSON body carries text. A value that
# is not UTF-8 (raw bytes) travels base64-encoded behind this byte, which no
# value of ours starts with (JSON text, or NUL for tagged bytes).
_BASE64_TAG: Final = "\x01"
# Upstash's 400s that are the caller's: the same call fails on any healthy tier.
_CALLER_ERRORS = (
    "WRONGTYPE",
    "not an integer",
    "overflow",
    "max key size exceeded",
    "max request size exceeded",
)
_SCAN_BATCH = 1000
# Compare-and-delete: only a lock's owner releases it.
_RELEASE_LOCK: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_TIMEOUT_STATUS = frozenset({408, 504})


class _Reply(Exception):  # noqa: N818 - an HTTP answer for `translate`; never leaves the tier
    """An HTTP status that is not 200, or an ``error`` in the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


class UpstashTier(Tier):
    """Upstash Redis (``upstash-redis``), UPSTASH_REDIS_REST_URL + UPSTASH_REDIS_REST_TOKEN.

    Every command is a ``POST /`` with a JSON array (never the path form, so
    any key works), several at once a ``POST /pipeline``. Replies are asked
    for base64-encoded, so any stored bytes come back exactly. The
    ``upstash-sync-token`` of each reply is sent with the next request, so
    this process reads its own writes. REDIS_CONNECT_TIMEOUT and
    REDIS_COMMAND_TIMEOUT are the httpx timeouts, REDIS_CONNECTION_POOL_SIZE
    the connection limit.
    """

    name: ClassVar[str] = "upstash-redis"
    distributed: ClassVar[bool] = True

    def __init__(
        self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if settings.upstash_url is None or settings.upstash_token is None:
            raise ValueError("the upstash-redis tier needs UPSTASH_REDIS_REST_URL and _TOKEN")
        self._url = settings.upstash_url
        self._settings = settings
        parts = urlsplit(self._url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self._node = NodeHealth(address=f"{parts.hostname}:{port}", role="master")
        self._given_transport = transport
        self._transport: httpx.AsyncBaseTransport | None = None
        self._client: httpx.AsyncClient | None = None
        self._sync_token: str | None = None
        self._in_flight = 0
        self._slots = asyncio.Semaphore(settings.connection_pool_size)
        self._deadline = (settings.connect_timeout_ms + settings.command_timeout_ms) / 1000
        # Set when the deadline cut a request off: the next request gets a fresh pool.
        self._stale_pool = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._old_clients: list[httpx.AsyncClient] = []

    def __repr__(self) -> str:
        figures = self.connection_pool()
        return f"<UpstashTier {self.describe()} [{figures.total} connections, {figures.active} active]>"

    def describe(self) -> str:
        return f"{self.name} {self._url}"

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return (self._node,)

    def connection_pool(self) -> PoolFigures:
        """Connections httpx holds open to Upstash, and those carrying a request now."""
        pool = getattr(self._transport, "_pool", None)
        connections = getattr(pool, "connections", None)
        if connections is None:
            return PoolFigures(total=0, active=0)
        total = len(connections)
        return PoolFigures(total=total, active=min(total, self._in_flight))

    async def start(self) -> None:
        if self._client is None:
            self._client = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        s = self._settings
        limits = httpx.Limits(
            max_connections=s.connection_pool_size, max_keepalive_connections=s.connection_pool_size
        )
        self._transport = self._given_transport or httpx.AsyncHTTPTransport(
            limits=limits, retries=0
        )
        command = s.command_timeout_ms / 1000
        token = s.upstash_token.reveal() if s.upstash_token is not None else ""
        return httpx.AsyncClient(
            base_url=self._url,
            transport=self._transport,
            timeout=httpx.Timeout(command, connect=s.connect_timeout_ms / 1000, pool=command),
            headers={"Authorization": f"Bearer {token}", "Upstash-Encoding": "base64"},
        )

    def _renew_client(self) -> None:
        """A fresh connection pool; the old one closes once its requests have ended.

        httpcore never reaps a connection whose request was cancelled while it was
        connecting (encode/httpcore#1093): after a hang cut off by the deadline, the
        pool fills with such connections and every later request waits for a slot
        until PoolTimeout, so the tier would never fail back.
        """
        self._stale_pool = False
        old = self._client
        if old is None or self._given_transport is not None:
            return
        self._client = self._new_client()
        self._old_clients.append(old)

        async def retire() -> None:
            await asyncio.sleep(self._deadline)
            self._old_clients.remove(old)
            with contextlib.suppress(httpx.HTTPError, OSError):
                await old.aclose()

        task = asyncio.create_task(retire(), name="pitchey-cache retire upstash pool")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        client, self._client = self._client, None
        self._transport = None
        retiring, self._retiring = self._retiring, set()
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        old, self._old_clients = self._old_clients, []
        for stale in old:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await stale.aclose()
        if client is not None:
            await client.aclose()

    def translate(self, exc: Exception) -> CacheError:
        if isinstance(exc, _Reply):
            return self._translate_reply(exc)
        if isinstance(exc, httpx.TimeoutException):
            return TierUnavailable(self.name, f"timed out ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            # The request never left: sending it again is safe.
            return TierUnavailable(self.name, f"connect failed ({exc})", retryable=True)
        # Only the type: the message of an unexpected error may quote a header (the token).
        return TierUnavailable(self.name, type(exc).__name__)

    def _translate_reply(self, reply: _Reply) -> CacheError:
        if reply.status == httpx.codes.UNAUTHORIZED:
            return TierUnavailable(self.name, "401 Unauthorized: check UPSTASH_REDIS_REST_TOKEN")
        if reply.status in {httpx.codes.OK, httpx.codes.BAD_REQUEST}:
            if any(marker in reply.message for marker in _CALLER_ERRORS):
                return CommandError(reply.message)
            return TierUnavailable(self.name, f"command refused: {reply.message[:200]}")
        overloaded = reply.status >= httpx.codes.INTERNAL_SERVER_ERROR
        return TierUnavailable(
            self.name,
            f"HTTP {reply.status}",
            retryable=overloaded and reply.status not in _TIMEOUT_STATUS,
        )

    # -- the wire --------------------------------------------------------------

    async def _post(self, path: str, body: list[Any]) -> Any:
        if self._stale_pool:
            self._renew_client()
        client = self._client
        if client is None:
            raise TierUnavailable(self.name, "not started")
        headers = {"Upstash-Sync-Token": self._sync_token} if self._sync_token else None
        self._in_flight += 1
        try:
            # httpx bounds each phase (pool wait, connect, write, read) on its own; a
            # trickling reply could stack them. This bounds the whole request.
            async with asyncio.timeout(self._deadline):
                # Waiting here, not in httpx's pool, saves httpcore a rescan of every
                # queued request each time a connection frees, a cost that grows with
                # the number of tasks waiting.
                async with self._slots:
                    response = await client.post(path, json=body, headers=headers)
        except TimeoutError:
            self._stale_pool = True
            raise httpx.TimeoutException(f"no complete answer within {self._deadline:g}s") from None
        finally:
            self._in_flight -= 1
        token = response.headers.get("upstash-sync-token")
        if token:
            self._sync_token = token
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != httpx.codes.OK:
            message = payload.get("error", "") if isinstance(payload, dict) else ""
            raise _Reply(response.status_code, str(message))
        return payload

    async def _command(self, *args: str | int) -> Any:
        """One command; the tier's edge, where HTTP and reply errors become ``CacheError``."""
        try:
            return _result(await self._post("/", list(args)))
        except (httpx.HTTPError, _Reply) as exc:
            raise self.translate(exc) from exc

    async def _pipeline(self, commands: list[list[str | int]]) -> list[Any]:
        """Several commands in one request; errors mapped as in :meth:`_command`."""
        try:
            payload = await self._post("/pipeline", commands)
            if not isinstance(payload, list):
                raise _Reply(200, "pipeline reply is not a list")
            return [_result(item) for item in payload]
        except (httpx.HTTPError, _Reply) as exc:
            raise self.translate(exc) from exc

    # -- the contract ------------------------------------------------------------

    async def ping(self, skip: Collection[str] = frozenset()) -> Mapping[str, str | None]:  # noqa: ARG002 - one endpoint, no heartbeat
        await self._command("PING")
        return {self._node.address: None}

    async def get(self, key: str) -> bytes | None:
        return _value(await self._command("GET", key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        reply = await self._command("MGET", *keys)
        return [_value(item) for item in reply]

    async def set(self, key: str, value: bytes, ttl: int, only_if_absent: bool) -> bool:
        args: list[str | int] = ["SET", key, _wire(value), "EX", ttl]
        if only_if_absent:
            args.append("NX")
        return await self._command(*args) is not None

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        await self._pipeline([["SET", k, _wire(v), "EX", ttl] for k, v in items.items()])

    async def delete(self, keys: Sequence[str]) -> int:
        return int(await self._command("DEL", *keys))

    async def exists(self, keys: Sequence[str]) -> int:
        return int(await self._command("EXISTS", *keys))

    async def expire(self, key: str, ttl: int) -> bool:
        return bool(await self._command("EXPIRE", key, ttl))

    async def ttl(self, key: str) -> int:
        return int(await self._command("TTL", key))

    async def incr(self, key: str, amount: int) -> int:
        return int(await self._command("INCRBY", key, amount))

    async def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        return await self._command("SET", key, token, "NX", "PX", ttl_ms) is not None

    async def release_lock(self, key: str, token: str) -> bool:
        return int(await self._command("EVAL", _RELEASE_LOCK, 1, key, token)) == 1

    async def delete_matching(self, pattern: str) -> int:
        async def scan(cursor: str) -> tuple[str, list[str]]:
            reply = await self._command("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_BATCH)
            return _text(reply[0]), [_text(k) for k in reply[1]]

        async def unlink(keys: list[str]) -> int:
            return int(await self._command("UNLINK", *keys))

        return await delete_by_scan(scan, unlink)


def _result(payload: Any) -> Any:
    """The ``result`` of a reply, base64-decoded; an ``error`` raises."""
    if not isinstance(payload, dict):
        raise _Reply(200, "reply is not a JSON object")
    if payload.get("error"):
        raise _Reply(200, str(payload["error"]))
    return _decode(payload.get("result"))


def _decode(raw: Any) -> Any:
    """Undo Upstash's base64 reply encoding: strings are base64, except the literal OK."""
    if isinstance(raw, str):
        if raw == "OK":
            return b"OK"
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error:
            raise _Reply(200, "reply string is not base64") from None
    if isinstance(raw, list):
        return [_decode(item) for item in raw]
    return raw


def _wire(value: bytes) -> str:
    """A stored value as JSON text can carry it: UTF-8 as is, anything else tagged base64."""
    if not value.startswith(_BASE64_TAG.encode()):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return _BASE64_TAG + base64.b64encode(value).decode("ascii")


def _value(reply: Any) -> bytes | None:
    """A stored value back from :func:`_wire`'s form."""
    if reply is None:
        return None
    if not isinstance(reply, bytes):
        return str(reply).encode()
    if reply[:1] == _BASE64_TAG.encode():
        try:
            return base64.b64decode(reply[1:], validate=True)
        except binascii.Error:
            return reply
    return reply


def _text(reply: Any) -> str:
    return reply.decode("utf-8", "surrogateescape") if isinstance(reply, bytes) else str(reply)
