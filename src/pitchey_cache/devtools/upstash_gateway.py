"""Upstash's REST protocol in front of one real Redis, for development and tests.

``pitchey-cache upstash-gateway --redis redis://127.0.0.1:6379 --port 8079`` serves what a
serverless deployment reaches at UPSTASH_REDIS_REST_URL, so the Upstash tier and the
official ``upstash-redis`` SDK can be run and tested without an Upstash account.

The protocol, as Upstash documents it (https://upstash.com/docs/redis/features/restapi,
https://upstash.com/docs/redis/troubleshooting/) and as the SDK speaks it:

- ``POST /`` with a JSON array ``["SET", "key", "value", "EX", 100]``: strings are UTF-8
  text, numbers and booleans stand for their JSON text. ``POST /pipeline`` and
  ``POST /multi-exec`` take an array of such arrays and answer an array of
  ``{"result": ...}`` / ``{"error": ...}``, one per command, in order; a transaction
  runs atomically (MULTI/EXEC), and one Redis rejects as a whole is a single
  ``{"error": ...}``.
- The path form ``GET|POST /COMMAND/arg/...``: each segment is percent-decoded to bytes;
  a POST body, taken as raw bytes (the binary-safe way in), is the next argument, and
  query parameters (``?EX=100``) come after it.
- ``Authorization: Bearer <token>``, or ``?_token=<token>``; otherwise 401.
- 200 with ``{"result": ...}``; 400 with ``{"error": "ERR ..."}`` (Redis's own error
  text) for a command Redis or the gateway rejects; 401; 405 for a method other than
  HEAD, GET, POST and PUT.
- Replies: bulk strings are decoded as UTF-8, invalid bytes becoming U+FFFD. With the
  ``Upstash-Encoding: base64`` request header (the SDK's default) every string at any
  depth is base64 of its bytes, except the status reply ``OK``; integers and nulls stay
  as they are.
- Limits: a request body over 10 MiB, or a key over 32 KiB, is refused with
  ``ERR max request size exceeded`` / ``ERR max key size exceeded`` (400).
- As Upstash's REST API does, connection-state commands (SELECT, AUTH, CLIENT except
  SETINFO, MULTI/EXEC/WATCH as commands, SUBSCRIBE...) and blocking commands (BLPOP,
  XREAD BLOCK...) are refused: every request shares one multiplexed Redis connection.

Choices where Upstash documents nothing:

- ``Upstash-Sync-Token`` (every authenticated reply) is a decimal counter of the
  requests this gateway process has sent a write to Redis (by Redis's own command
  flags). One Redis always reads its own writes, so a token a client sends back is
  accepted and never waited on; the counter restarts at 0 with the process.
- Redis unreachable, frozen or refusing the gateway's credentials: 503 with
  ``{"error": ...}``, within the connect plus command timeout, never a hang.
- Path form: leading and trailing slashes are dropped (``/get/k/`` is ``GET k``), an
  empty segment is an empty argument, ``+`` means a space in the query string only, and
  an empty POST body adds no argument. JSON ``null``, arrays and objects as arguments
  are a 400. ``Upstash-Response-Format: resp2`` is not offered (400).
- The request body is read no further than the limit; a key is measured only when some
  argument exceeds the key limit, by asking Redis (COMMAND GETKEYS) which are keys.

Redis is reached through valkey-glide, which reshapes some replies by command (HGETALL
to a map, ZSCORE to a float, SMEMBERS to a set, XRANGE to nested pairs) and rewrites
error text. :func:`_restore_resp2` and :func:`_server_error` turn them back into the
RESP2 shapes and ``ERR ...`` texts Upstash answers with; doubles come back in their
shortest form (``0.1``), where Redis 7.0 prints 17 digits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import re
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import glide
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pitchey_cache.devtools.local_redis import LOOPBACK
from pitchey_cache.redaction import REDACTED, redact
from pitchey_cache.web.logs import redact_tokens_in_access_logs

__all__ = [
    "DEFAULT_PORT",
    "MAX_KEY_BYTES",
    "MAX_REQUEST_BYTES",
    "RedisTarget",
    "create_gateway_app",
    "run_upstash_gateway_command",
]

# Upstash's limits: "max request size which is 10MB" and "max key size limit, which is
# 32Kb" (troubleshooting pages max_request_size_exceeded, max_key_size_exceeded).
MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024
MAX_KEY_BYTES: Final = 32 * 1024
DEFAULT_PORT: Final = 8079
DEFAULT_COMMAND_TIMEOUT_MS: Final = 1000
DEFAULT_CONNECT_TIMEOUT_MS: Final = 1000
TOKEN_VARIABLE: Final = "UPSTASH_REDIS_REST_TOKEN"  # noqa: S105 - a variable name
SYNC_TOKEN_HEADER: Final = "Upstash-Sync-Token"  # noqa: S105 - a header name
ENCODING_HEADER: Final = "Upstash-Encoding"
RESPONSE_FORMAT_HEADER: Final = "Upstash-Response-Format"

_ALLOWED_METHODS: Final = ("GET", "HEAD", "POST", "PUT")
_BODY_METHODS: Final = frozenset({"POST", "PUT"})
_BATCH_ENDPOINTS: Final = frozenset({"pipeline", "multi-exec"})
# Room for a path-form key at the key limit, percent-encoded, plus its command: h11's
# default (16 KiB) would refuse such a request line before the gateway saw it.
_MAX_REQUEST_LINE_BYTES: Final = 4 * MAX_KEY_BYTES + 64 * 1024

_log = logging.getLogger(__name__)

JsonReply: TypeAlias = "int | str | list[JsonReply] | None"
# A reply as Redis sent it over RESP2: bulk strings as bytes, status replies as str.
Resp2: TypeAlias = "int | bytes | str | list[Resp2] | None"


class GatewayError(Exception):
    """What the gateway answers instead of a result: an HTTP status and ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RedisTarget:
    """The Redis behind the gateway, from ``redis[s]://[[user]:password@]host[:port][/db]``."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        expected = "expected redis://[[user]:password@]host[:port][/db] or rediss://..."
        shown = redact_url(url)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"--redis {shown!r}: {expected}")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"--redis {shown!r}: port must be 1-65535") from None
        database = parts.path.strip("/") or "0"
        if not database.isdigit() or parts.query or parts.fragment:
            raise ValueError(f"--redis {shown!r}: the path must be a database number; {expected}")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(database),
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=(urllib.parse.unquote(parts.password) if parts.password is not None else None),
            tls=parts.scheme == "rediss",
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        credentials = f"{self.username or ''}:{REDACTED}@" if self.password else ""
        return f"{scheme}://{credentials}{self.address}/{self.db}"


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` part masked, for messages and logs."""
    return re.sub(r"(?<=//)[^/@]*@", f"{REDACTED}@", url, count=1)


# ---------------------------------------------------------------------------
# Commands: from JSON or a path to Redis arguments, and what the REST API refuses


Command: TypeAlias = list[bytes]

# Upstash's REST API supports, of the connection group, only PING and ECHO; of pub/sub,
# only PUBLISH and PUBSUB; no blocking command and no WATCH/UNWATCH/DISCARD ("REST -
# Redis API Compatibility"). Here they would also change or stall the one connection
# every request shares.
_CONNECTION = ("AUTH", "HELLO", "SELECT", "QUIT", "RESET", "READONLY", "READWRITE", "ASKING")
_TRANSACTION = ("MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH")
_SUBSCRIBE = ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE")
_SUBSCRIBE_MORE = ("SUNSUBSCRIBE", "MONITOR")
_BLOCKING = ("BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX")
_BLOCKING_MORE = ("BZMPOP", "WAIT", "WAITAOF")
_SERVER = ("SYNC", "PSYNC", "REPLCONF", "REPLICAOF", "SLAVEOF", "FAILOVER", "SHUTDOWN")
_REFUSED: Final[Mapping[bytes, str]] = {
    name.encode(): reason
    for names, reason in (
        (_CONNECTION, "connection commands other than PING and ECHO are not available over REST"),
        (_TRANSACTION, "transactions go to the /multi-exec endpoint; WATCH is not available"),
        (_SUBSCRIBE + _SUBSCRIBE_MORE, "only PUBLISH and PUBSUB of pub/sub are available"),
        (_BLOCKING + _BLOCKING_MORE, "blocking commands are not available over REST"),
        (_SERVER, "replication and server lifecycle commands are not available over REST"),
        (("CLUSTER",), "cluster commands are not available over REST"),
    )
    for name in names
}


def _refusal(command: Command) -> str | None:
    """Why the REST API does not run ``command``, or None if it does."""
    name = command[0].upper()
    if name == b"CLIENT":
        if len(command) > 1 and command[1].upper() == b"SETINFO":
            return None
        reason: str | None = "of CLIENT, only CLIENT SETINFO is available over REST"
    elif name in (b"XREAD", b"XREADGROUP") and any(a.upper() == b"BLOCK" for a in command):
        reason = "blocking commands are not available over REST (XREAD without BLOCK is)"
    else:
        reason = _REFUSED.get(name)
    if reason is None:
        return None
    return f"ERR {name.decode(errors='replace')}: {reason}"


def _argument(value: object, position: int) -> bytes:
    # Numbers arrive as their JSON text (the parser keeps it), so 100, 1e3 and
    # 12345678901234567890 reach Redis exactly as written.
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise GatewayError(
                400, f"ERR argument {position} is not valid Unicode (a lone surrogate)"
            ) from None
    if isinstance(value, bool):
        return b"true" if value else b"false"
    kind = "null" if value is None else type(value).__name__
    raise GatewayError(
        400, f"ERR argument {position} is a JSON {kind}; use strings, numbers or booleans"
    )


def _json_body(body: bytes) -> object:
    if not body.strip():
        raise GatewayError(400, 'ERR empty request body: send a JSON array such as ["PING"]')
    try:
        return json.loads(body, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError) as exc:
        raise GatewayError(400, f"ERR the request body is not valid JSON ({exc})") from None


def _json_command(value: object) -> Command:
    if not isinstance(value, list) or not value:
        raise GatewayError(
            400, 'ERR a command is a non-empty JSON array, such as ["SET", "key", "value"]'
        )
    if not isinstance(value[0], str):
        raise GatewayError(400, "ERR the command name must be a JSON string")
    return [_argument(item, position) for position, item in enumerate(value)]


def _json_commands(value: object) -> list[Command]:
    if not isinstance(value, list):
        raise GatewayError(
            400, 'ERR a pipeline or transaction is a JSON array of commands, such as [["PING"]]'
        )
    return [_json_command(item) for item in value]


def _path_segments(raw_path: bytes) -> list[bytes]:
    # Split before decoding, so an encoded "/" (%2F) stays inside its argument.
    trimmed = raw_path.strip(b"/")
    if not trimmed:
        return []
    return [urllib.parse.unquote_to_bytes(segment) for segment in trimmed.split(b"/")]


def _query_pairs(query_string: bytes) -> list[tuple[bytes, bytes | None]]:
    pairs: list[tuple[bytes, bytes | None]] = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        name, separator, value = part.partition(b"=")
        pairs.append((_form_decode(name), _form_decode(value) if separator else None))
    return pairs


def _form_decode(text: bytes) -> bytes:
    return urllib.parse.unquote_to_bytes(text.replace(b"+", b" "))


# ---------------------------------------------------------------------------
# Replies: glide's values back to RESP2 shapes, then to Upstash's JSON


def _restore_resp2(command: Command, value: object) -> Resp2:
    """Undo glide's per-command reshaping, so the reply is what Redis sent over RESP2."""
    restore = _RESHAPED.get(command[0].upper())
    return _generic_resp2(value if restore is None else restore(value))


def _stream_entries(entries: object) -> object:
    """``{id: [[field, value], ...]}`` back to ``[[id, [field, value, ...]], ...]``."""
    if not isinstance(entries, dict):
        return entries
    return [
        [entry_id, _flatten_pairs(fields) if _is_pairs(fields) else fields]
        for entry_id, fields in entries.items()
    ]


def _streams(value: object) -> object:
    """XREAD's ``{stream: {id: pairs}}`` back to ``[[stream, entries], ...]``."""
    if not isinstance(value, dict):
        return value
    return [[stream, _stream_entries(entries)] for stream, entries in value.items()]


def _autoclaim(value: object) -> object:
    """XAUTOCLAIM's ``[cursor, {id: pairs}, deleted]``: the middle back to entries."""
    if not isinstance(value, list) or len(value) != len(("cursor", "claimed", "deleted")):
        return value
    return [value[0], _stream_entries(value[1]), value[2]]


def _unpaired(value: object) -> object:
    """HRANDFIELD WITHVALUES and ZRANDMEMBER WITHSCORES: pairs back to one flat array."""
    return _flatten_pairs(value) if _is_pairs(value) else value


def _geosearch(value: object) -> object:
    """GEOSEARCH WITH...: ``[member, [dist, hash, coords]]`` back to one flat entry."""
    if not _is_pairs(value):
        return value
    assert isinstance(value, list)  # noqa: S101 - _is_pairs checked it
    return [[pair[0], *pair[1]] if isinstance(pair[1], list) else pair for pair in value]


def _lmpop(value: object) -> object:
    """LMPOP's ``{key: elements}`` back to ``[key, elements]``."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    return list(next(iter(value.items())))


def _zmpop(value: object) -> object:
    """ZMPOP's ``[key, {member: score}]`` back to ``[key, [[member, score], ...]]``."""
    if not isinstance(value, list) or len(value) != len(("key", "popped")):
        return value
    source, popped = value
    if not isinstance(popped, dict):
        return value
    return [source, [list(pair) for pair in popped.items()]]


_RESHAPED: Final[Mapping[bytes, Callable[[object], object]]] = {
    b"XRANGE": _stream_entries,
    b"XREVRANGE": _stream_entries,
    b"XCLAIM": _stream_entries,
    b"XREAD": _streams,
    b"XREADGROUP": _streams,
    b"XAUTOCLAIM": _autoclaim,
    b"HRANDFIELD": _unpaired,
    b"ZRANDMEMBER": _unpaired,
    b"GEOSEARCH": _geosearch,
    b"LMPOP": _lmpop,
    b"ZMPOP": _zmpop,
}


def _is_pairs(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(pair, list) and len(pair) == len(("key", "value")) for pair in value)
    )


def _flatten_pairs(value: object) -> list[object]:
    assert isinstance(value, list)  # noqa: S101 - callers checked _is_pairs
    return [item for pair in value for item in pair]


# One return per kind of value reads clearest here.
def _generic_resp2(value: object) -> Resp2:  # noqa: PLR0911
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | bytes | str):
        return value
    if isinstance(value, float):
        return _format_double(value)
    if isinstance(value, dict):
        return [_generic_resp2(item) for pair in value.items() for item in pair]
    if isinstance(value, set | frozenset):
        # Redis lists a set's members in no promised order; sorted is at least stable.
        return [_generic_resp2(item) for item in sorted(value, key=_sort_key)]
    if isinstance(value, list | tuple):
        return [_generic_resp2(item) for item in value]
    if isinstance(value, glide.RequestError):
        # An error reply nested in an array (a script's {err=...}) keeps its text.
        return _server_error(str(value)) or str(value)
    return str(value)


def _sort_key(item: object) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def _format_double(value: float) -> bytes:
    """A double as Redis writes it in a bulk string: ``1.5``, ``3``, ``inf``, ``1e+20``."""
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    text = repr(value)
    return (text.removesuffix(".0") if text.endswith(".0") else text).encode()


def _to_json(value: Resp2, *, base64_strings: bool) -> JsonReply:
    if isinstance(value, list):
        return [_to_json(item, base64_strings=base64_strings) for item in value]
    if isinstance(value, str):
        # glide hands status replies over as str ("OK") and bulk strings as bytes.
        if value == "OK" or not base64_strings:
            return value
        return base64.b64encode(value.encode()).decode()
    if isinstance(value, bytes):
        if base64_strings:
            return base64.b64encode(value).decode()
        # Upstash: an invalid UTF-8 character is "replaced with a U+FFFD".
        return value.decode(errors="replace")
    return value


# ---------------------------------------------------------------------------
# Errors: glide's texts back to Redis's


# redis-rs names the error kinds it knows; the rest keep their code ("WRONGTYPE: ...").
_KIND_CODES: Final[Mapping[str, str]] = {
    "ResponseError": "ERR",
    "ExecAbortError": "EXECABORT",
    "BusyLoadingError": "LOADING",
    "NoScriptError": "NOSCRIPT",
    "TryAgain": "TRYAGAIN",
    "ClusterDown": "CLUSTERDOWN",
    "CrossSlot": "CROSSSLOT",
    "MasterDown": "MASTERDOWN",
    "ReadOnly": "READONLY",
    "NotBusy": "NOTBUSY",
    "Moved": "MOVED",
    "Ask": "ASK",
}
_SIGNALLED = re.compile(r"An error was signalled by the server: - (\w+): (.*)", re.DOTALL)
_CODED = re.compile(r"([A-Z][A-Z0-9_-]*): (.*)", re.DOTALL)


def _server_error(text: str) -> str | None:
    """The error reply Redis sent, as Redis wrote it, or None if glide failed on its own."""
    text = text.strip()
    signalled = _SIGNALLED.fullmatch(text)
    if signalled is not None:
        kind, detail = signalled.groups()
        return f"{_KIND_CODES.get(kind, kind)} {detail}"
    coded = _CODED.fullmatch(text)
    if coded is not None:
        return f"{coded[1]} {coded[2]}"
    return None


# ---------------------------------------------------------------------------
# Redis through one glide client


class _Redis:
    """One lazily connecting, multiplexed glide client that every request shares."""

    def __init__(
        self, target: RedisTarget, *, command_timeout_ms: int, connect_timeout_ms: int
    ) -> None:
        self.target = target
        self._command_timeout_ms = command_timeout_ms
        self._connect_timeout_ms = connect_timeout_ms
        # glide bounds each call by these timeouts; this outer bound covers the rest.
        self._deadline = (command_timeout_ms + connect_timeout_ms) / 1000 + 0.5
        self._client: glide.GlideClient | None = None
        self._creating = asyncio.Lock()
        # Commands Redis flags "write" or "may_replicate", from COMMAND, once known.
        self._writes: frozenset[bytes] | None = None
        self.sync_token = 0

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing a client glide already closed is not an error here.
            with contextlib.suppress(glide.GlideError):
                await client.close()

    async def call(self, command: Command) -> Resp2:
        async with self._calling():
            reply = await (await self._connected()).custom_command(list[glide.TEncodable](command))
        return _restore_resp2(command, reply)

    async def batch(
        self, commands: Sequence[Command], *, atomic: bool
    ) -> list[Resp2 | GatewayError]:
        """Run ``commands`` as one pipeline, or one MULTI/EXEC; errors in place."""
        batch = glide.Batch(is_atomic=atomic)
        for command in commands:
            batch.custom_command(list[glide.TEncodable](command))
        async with self._calling():
            replies = await (await self._connected()).exec(batch, raise_on_error=False)
        if replies is None:
            raise GatewayError(500, "ERR the transaction was aborted")
        return [
            self._translate(reply) if isinstance(reply, glide.GlideError) else
            _restore_resp2(command, reply)
            for command, reply in zip(commands, replies, strict=True)
        ]  # fmt: skip

    async def keys_of(self, command: Command) -> list[bytes]:
        """The key arguments of ``command``, as Redis's COMMAND GETKEYS finds them."""
        try:
            keys = await self.call([b"COMMAND", b"GETKEYS", *command])
        except GatewayError as exc:
            if exc.status >= 500:  # noqa: PLR2004
                raise
            # No key arguments, or a malformed command Redis will itself refuse.
            return []
        return [key for key in keys if isinstance(key, bytes)] if isinstance(keys, list) else []

    async def note_writes(self, commands: Sequence[Command], *, answered: bool) -> None:
        """Advance the sync token if any of ``commands`` may have written.

        The command table is read once Redis has ``answered`` something, so an outage
        does not cost a second timeout per request.
        """
        if self._writes is None and answered:
            self._writes = await self._load_writes()
        if self._writes is None or any(c[0].lower() in self._writes for c in commands):
            self.sync_token += 1

    async def _load_writes(self) -> frozenset[bytes] | None:
        try:
            table = await self.call([b"COMMAND"])
        except GatewayError:
            # Unknown for now: every request counts as a write until it is known.
            return None
        writes = set()
        for entry in table if isinstance(table, list) else []:
            if not isinstance(entry, list) or len(entry) < 3:  # noqa: PLR2004
                continue
            name, flags = entry[0], entry[2]
            writing = isinstance(flags, list) and (b"write" in flags or b"may_replicate" in flags)
            if isinstance(name, bytes) and writing:
                writes.add(name.lower())
        return frozenset(writes)

    async def _connected(self) -> glide.GlideClient:
        if self._client is None:
            async with self._creating:
                if self._client is None:
                    self._client = await glide.GlideClient.create(self._configuration())
        return self._client

    def _configuration(self) -> glide.GlideClientConfiguration:
        target = self.target
        credentials = None
        if target.password is not None:
            credentials = glide.ServerCredentials(
                password=target.password, username=target.username
            )
        return glide.GlideClientConfiguration(
            [glide.NodeAddress(target.host, target.port)],
            use_tls=target.tls,
            credentials=credentials,
            database_id=target.db,
            request_timeout=self._command_timeout_ms,
            # Upstash answers in RESP2's shapes; RESP3 maps, sets and doubles would
            # only add to what has to be turned back.
            protocol=glide.ProtocolVersion.RESP2,
            # Connecting happens on the first call, never at startup, so the gateway
            # comes up (and answers 503) while Redis is still down.
            lazy_connect=True,
            advanced_config=glide.AdvancedGlideClientConfiguration(
                connection_timeout=self._connect_timeout_ms
            ),
            # Capped backoff: the gateway is usable again soon after Redis returns.
            reconnect_strategy=glide.BackoffStrategy(num_of_retries=3, factor=100, exponent_base=2),
            client_name="pitchey-cache-upstash-gateway",
        )

    @contextlib.asynccontextmanager
    async def _calling(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._deadline):
                yield
        except glide.GlideError as exc:
            raise self._translate(exc) from None
        except TimeoutError:
            raise GatewayError(
                503, f"ERR Redis at {self.target.address} did not answer within {self._deadline:g}s"
            ) from None

    def _translate(self, exc: glide.GlideError) -> GatewayError:
        """Map a glide failure once: Redis's refusals are 400, everything else is 5xx."""
        text = str(exc).strip()
        text = redact(text, self.target.password)
        first_line = text.splitlines()[0] if text else type(exc).__name__
        address = self.target.address
        if isinstance(exc, glide.TimeoutError):
            return GatewayError(
                503,
                f"ERR Redis at {address} did not answer within {self._command_timeout_ms} ms",
            )
        if isinstance(exc, glide.ConnectionError | glide.ClosingError):
            return GatewayError(503, f"ERR Redis at {address} is unreachable: {first_line}")
        server = _server_error(text) if isinstance(exc, glide.RequestError) else None
        if server is not None:
            return GatewayError(400, server)
        if "NOAUTH" in text or "WRONGPASS" in text or "AuthenticationFailed" in text:
            return GatewayError(
                503, f"ERR Redis at {address} refused the gateway's credentials (see --redis)"
            )
        if "connect" in text.lower() or "IoError" in text:
            return GatewayError(503, f"ERR Redis at {address} is unreachable: {first_line}")
        return GatewayError(500, f"ERR the gateway could not use Redis's reply: {first_line}")


# ---------------------------------------------------------------------------
# HTTP


class _Gateway:
    """The one endpoint: authenticate, read the command(s), run them, answer in JSON."""

    def __init__(self, redis: _Redis, token: str, *, max_request_bytes: int, max_key_bytes: int):
        self._redis = redis
        self._token = token.encode()
        self._max_request_bytes = max_request_bytes
        self._max_key_bytes = max_key_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A plain ASGI app, so the router passes every method here and the 405s are
        # Upstash's JSON rather than Starlette's text.
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        method = request.method
        segments = _path_segments(request.scope.get("raw_path") or request.url.path.encode())
        endpoint = segments[0].decode(errors="replace").lower() if len(segments) == 1 else ""
        batch = endpoint in _BATCH_ENDPOINTS
        allowed = ("POST", "PUT") if batch else _ALLOWED_METHODS
        if method not in allowed:
            return _reply(
                405,
                {"error": f"ERR method {method} is not allowed here; use {', '.join(allowed)}"},
                {"Allow": ", ".join(allowed)},
            )
        query = _query_pairs(request.scope.get("query_string", b""))
        if not self._authorized(request, query):
            # Upstash's text; the token offered is never echoed.
            return _reply(
                401,
                {"error": "WRONGPASS invalid or missing auth token"},
                {"WWW-Authenticate": "Bearer"},
            )
        try:
            result = await self._run(request, segments, batch, endpoint, query)
        except GatewayError as exc:
            return _reply(exc.status, {"error": exc.message}, self._sync_header())
        except ClientDisconnect:
            return _reply(400, {"error": "ERR the client went away"})
        return _reply(200, result, self._sync_header())

    def _authorized(self, request: Request, query: Sequence[tuple[bytes, bytes | None]]) -> bool:
        offered: bytes | None = None
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                offered = credentials.strip() if scheme.lower() == b"bearer" else b""
                break
        else:
            offered = next((value for name, value in query if name == b"_token"), None)
        return offered is not None and hmac.compare_digest(offered, self._token)

    def _sync_header(self) -> dict[str, str]:
        return {SYNC_TOKEN_HEADER: str(self._redis.sync_token)}

    async def _run(
        self,
        request: Request,
        segments: list[bytes],
        batch: bool,
        endpoint: str,
        query: Sequence[tuple[bytes, bytes | None]],
    ) -> object:
        base64_strings = request.headers.get(ENCODING_HEADER, "").lower() == "base64"
        response_format = request.headers.get(RESPONSE_FORMAT_HEADER, "json").lower()
        if response_format != "json":
            raise GatewayError(
                400, f"ERR {RESPONSE_FORMAT_HEADER}: this gateway answers in json only"
            )
        body = await self._body(request) if request.method in _BODY_METHODS else b""
        if batch:
            commands = _json_commands(_json_body(body))
            outcomes = await self._run_batch(commands, atomic=endpoint == "multi-exec")
            return [_outcome(outcome, base64_strings=base64_strings) for outcome in outcomes]
        if segments:
            command = list(segments)
            if body:
                command.append(body)
            for name, value in query:
                if name != b"_token":
                    command += [name] if value is None or value == b"" else [name, value]
        elif body or request.method in _BODY_METHODS:
            command = _json_command(_json_body(body))
        else:
            raise GatewayError(
                400, 'ERR no command: POST a JSON array such as ["PING"], or GET /PING'
            )
        return {"result": _to_json(await self._run_one(command), base64_strings=base64_strings)}

    async def _body(self, request: Request) -> bytes:
        limit = self._max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, int(declared))
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                # Stop reading: the rest of an oversized body is never buffered.
                raise _too_large(limit, size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _check(self, command: Command) -> None:
        refusal = _refusal(command)
        if refusal is not None:
            raise GatewayError(400, refusal)
        # Only a command with an argument over the limit can have a key over it; just
        # then ask Redis which arguments are keys.
        if any(len(argument) > self._max_key_bytes for argument in command[1:]):
            for key in await self._redis.keys_of(command):
                if len(key) > self._max_key_bytes:
                    raise GatewayError(
                        400,
                        f"ERR max key size exceeded. Limit: {self._max_key_bytes} bytes, "
                        f"Actual: {len(key)} bytes",
                    )

    async def _run_one(self, command: Command) -> Resp2:
        await self._check(command)
        try:
            reply = await self._redis.call(command)
        except GatewayError as exc:
            await self._redis.note_writes([command], answered=exc.status < 500)  # noqa: PLR2004
            raise
        await self._redis.note_writes([command], answered=True)
        return reply

    async def _run_batch(
        self, commands: Sequence[Command], *, atomic: bool
    ) -> list[Resp2 | GatewayError]:
        checks: list[GatewayError | None] = []
        for command in commands:
            try:
                await self._check(command)
            except GatewayError as exc:
                if exc.status >= 500 or atomic:  # noqa: PLR2004
                    # A transaction is discarded as a whole (Upstash: "at least one of
                    # the commands is unsupported" or too large).
                    raise
                checks.append(exc)
            else:
                checks.append(None)
        runnable = [c for c, refused in zip(commands, checks, strict=True) if refused is None]
        if not runnable:
            return [refused for refused in checks if refused is not None]
        try:
            replies = iter(await self._redis.batch(runnable, atomic=atomic))
        except GatewayError as exc:
            await self._redis.note_writes(runnable, answered=exc.status < 500)  # noqa: PLR2004
            raise
        await self._redis.note_writes(runnable, answered=True)
        return [next(replies) if refused is None else refused for refused in checks]


def _too_large(limit: int, actual: int) -> GatewayError:
    return GatewayError(
        400, f"ERR max request size exceeded. Limit: {limit} bytes, Actual: {actual} bytes"
    )


def _outcome(outcome: Resp2 | GatewayError, *, base64_strings: bool) -> dict[str, JsonReply]:
    if isinstance(outcome, GatewayError):
        return {"error": outcome.message}
    return {"result": _to_json(outcome, base64_strings=base64_strings)}


def _reply(status: int, content: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, headers=headers, media_type="application/json"
    )


# ---------------------------------------------------------------------------
# The app and the command line


def create_gateway_app(
    redis_url: str,
    token: str,
    *,
    command_timeout_ms: int = DEFAULT_COMMAND_TIMEOUT_MS,
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_key_bytes: int = MAX_KEY_BYTES,
) -> Starlette:
    """A Starlette app speaking Upstash's REST protocol in front of the Redis at ``redis_url``.

    Raises ValueError for a malformed URL or an empty token; the messages never hold
    the password or the token. Redis is first contacted by the first request.
    """
    if not token:
        raise ValueError(f"the gateway needs a token ({TOKEN_VARIABLE}); it was empty")
    if command_timeout_ms < 1 or connect_timeout_ms < 1:
        raise ValueError("timeouts must be at least 1 ms")
    redis = _Redis(
        RedisTarget.from_url(redis_url),
        command_timeout_ms=command_timeout_ms,
        connect_timeout_ms=connect_timeout_ms,
    )
    gateway = _Gateway(
        redis, token, max_request_bytes=max_request_bytes, max_key_bytes=max_key_bytes
    )
    redact_tokens_in_access_logs()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # glide logs a warning per failed reconnect; the 503s already tell the story.
        glide.Logger.init(glide.LogLevel.ERROR)
        try:
            yield
        finally:
            await redis.close()

    app = Starlette(lifespan=lifespan)
    # Every request is the gateway's: a route pattern would not match a decoded path
    # holding a newline (a path-form key with CRLF), and would answer 404 for it.
    app.router.default = gateway
    app.state.redis_target = redis.target
    return app


def run_upstash_gateway_command(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> int:
    """``pitchey-cache upstash-gateway``; returns the process exit code."""
    env = os.environ if environ is None else environ
    args = _parser().parse_args(list(argv))
    token = args.token if args.token is not None else env.get(TOKEN_VARIABLE, "")
    if not token:
        print(
            f"pitchey-cache upstash-gateway: no token: set {TOKEN_VARIABLE} "
            "(or pass --token, which `ps` shows to every user)",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_gateway_app(args.redis, token, command_timeout_ms=args.timeout)
    except ValueError as exc:
        print(f"pitchey-cache upstash-gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    _log.info(
        "Upstash REST gateway for %s; UPSTASH_REDIS_REST_URL=http://%s:%d",
        app.state.redis_target,
        host,
        args.port,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        h11_max_incomplete_event_size=_MAX_REQUEST_LINE_BYTES,
    )
    return 0


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"{text}: a port is 1-65535")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pitchey-cache upstash-gateway",
        description=(
            "Serve Upstash's REST API (POST /, /pipeline, /multi-exec, the path form) in "
            "front of a real Redis, for local development without an Upstash account."
        ),
    )
    parser.add_argument(
        "--redis",
        default=f"redis://{LOOPBACK}:6379",
        help="redis[s]://[[user]:password@]host[:port][/db] (default redis://127.0.0.1:6379)",
    )
    parser.add_argument(
        "--token",
        help=(
            f"the bearer token clients must send (prefer the {TOKEN_VARIABLE} environment "
            "variable: a command line is visible to every user in `ps`)"
        ),
    )
    parser.add_argument("--host", default=LOOPBACK, help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_COMMAND_TIMEOUT_MS,
        metavar="MS",
        help=(
            "answer 503 when Redis has not replied after this long "
            f"(default {DEFAULT_COMMAND_TIMEOUT_MS})"
        ),
    )
    return parser
