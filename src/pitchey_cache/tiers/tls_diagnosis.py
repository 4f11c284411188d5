"""Why a Redis connection fails, when the reason is TLS and glide cannot say.

valkey-glide reports an unknown CA, a client certificate the server demands,
plaintext sent to a TLS port and TLS sent to a plaintext port all as a connect
failure that says only "timed out" (its standalone client), or as an opaque
"connection driver unexpectedly terminated" (its cluster client): it retries
until REDIS_CONNECT_TIMEOUT and keeps only the last error. After such a
failure, a probe asks the server itself with Python's ``ssl`` module, with the
same REDIS_TLS_* settings, and names the problem. Nothing here runs on a call's
path: only health probes and ``pitchey-cache check`` ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from enum import Enum

from pitchey_cache.config import NodeAddress, Settings

__all__ = ["client_context", "diagnose_tls"]

_PING = b"*1\r\n$4\r\nPING\r\n"
# The first byte of every RESP2 and RESP3 reply.
_RESP_TYPES = b"+-:$*_,#!=(%~>|"
# OpenSSL's verify codes for a chain that ends at no trusted root: the CA is unknown.
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})


class _Plaintext(Enum):
    ANSWERED = "answered"  # a RESP reply: the port speaks plaintext
    CLOSED = "closed"  # closed or reset without a reply, as a TLS port does
    OTHER = "other"


async def diagnose_tls(
    addresses: Sequence[NodeAddress], settings: Settings, *, within: float
) -> str | None:
    """The TLS problem of the first of ``addresses`` that shows one, or None.

    None means TLS is not why a connection fails: the port is closed, the
    server is frozen, or the handshake works. Every address is asked at once,
    and the whole diagnosis takes at most ``within`` seconds.
    """

    async def one(address: NodeAddress) -> str | None:
        try:
            return await _diagnose(address, settings)
        except OSError:
            # Refused, unreachable, reset at the wrong moment: not a TLS matter.
            return None

    try:
        async with asyncio.timeout(within):
            problems = await asyncio.gather(*(one(a) for a in addresses))
    except TimeoutError:
        return None
    return next((p for p in problems if p is not None), None)


async def _diagnose(address: NodeAddress, settings: Settings) -> str | None:
    # Plaintext first: a TLS handshake sent to a plaintext Redis is never
    # answered (Redis waits for the end of an inline command), while a PING
    # sent in plaintext to a TLS port is refused at once.
    plaintext = await _plaintext_answer(address)
    if not settings.tls_enabled:
        if plaintext is _Plaintext.CLOSED and await _speaks_tls(address):
            return (
                f"TLS: {address} accepts only TLS connections; set REDIS_TLS_ENABLED=true "
                "(and REDIS_TLS_CA_CERT to the CA of its certificate)"
            )
        return None
    if plaintext is _Plaintext.ANSWERED:
        return (
            f"TLS: {address} answered in plaintext, not TLS: REDIS_TLS_ENABLED=true needs "
            "the server's TLS port"
        )
    return await _tls_problem(address, settings)


async def _plaintext_answer(address: NodeAddress) -> _Plaintext:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(_PING)
        await writer.drain()
        line = await reader.readline()
    except ConnectionError:
        return _Plaintext.CLOSED
    finally:
        await _close(writer)
    if not line:
        return _Plaintext.CLOSED
    return _Plaintext.ANSWERED if line[0] in _RESP_TYPES else _Plaintext.OTHER


async def _speaks_tls(address: NodeAddress) -> bool:
    """Whether a TLS handshake completes, without verifying anything."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.open_connection(
            address.host, address.port, ssl=context, server_hostname=address.host
        )
    except ssl.SSLError:
        return False
    await _close(writer)
    return True


def client_context(settings: Settings) -> ssl.SSLContext:
    """The client side glide is configured for, in Python's ``ssl``."""
    ca = settings.tls_ca_cert
    context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    if settings.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.tls_cert is not None and settings.tls_key is not None:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


async def _tls_problem(address: NodeAddress, settings: Settings) -> str | None:
    try:
        context = client_context(settings)
    except ssl.SSLError as exc:
        return f"TLS: cannot load REDIS_TLS_CA_CERT, REDIS_TLS_CERT or REDIS_TLS_KEY ({exc.reason})"
    try:
        reader, writer = await asyncio.open_connection(
            address.host, address.port, ssl=context, server_hostname=address.host
        )
    except ssl.SSLCertVerificationError as exc:
        return _verify_problem(address, exc, settings)
    except ssl.SSLError as exc:
        return _handshake_problem(address, exc, settings)
    return await _problem_after_handshake(address, settings, reader, writer)


async def _problem_after_handshake(
    address: NodeAddress,
    settings: Settings,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> str | None:
    try:
        writer.write(_PING)
        await writer.drain()
        answer = await reader.readline()
    except ssl.SSLError as exc:
        # With TLS 1.3 the server checks the client's certificate after the
        # handshake has completed on our side; its alert arrives with the reply.
        return _handshake_problem(address, exc, settings)
    except ConnectionError:
        # The same, when the reset overtook the alert.
        answer = b""
    finally:
        await _close(writer)
    if answer:
        return None
    if settings.tls_cert is None:
        return (
            f"TLS: {address} closed the connection after the handshake; it likely requires "
            "a client certificate (mutual TLS): set REDIS_TLS_CERT and REDIS_TLS_KEY"
        )
    return (
        f"TLS: {address} closed the connection after the handshake; it likely refused "
        "the client certificate of REDIS_TLS_CERT"
    )


def _verify_problem(
    address: NodeAddress, exc: ssl.SSLCertVerificationError, settings: Settings
) -> str:
    if exc.verify_code in _UNKNOWN_CA_CODES:
        if settings.tls_ca_cert is None:
            where = "a CA of the system store; set REDIS_TLS_CA_CERT to its CA"
        else:
            where = f"the CA in REDIS_TLS_CA_CERT ({settings.tls_ca_cert})"
        return (
            f"TLS: certificate verify failed (unknown CA: the certificate of {address} "
            f"is not issued by {where})"
        )
    return f"TLS: certificate verify failed ({exc.verify_message}) for {address}"


def _handshake_problem(address: NodeAddress, exc: ssl.SSLError, settings: Settings) -> str:
    reason = str(exc.reason or exc)
    if "CERTIFICATE_REQUIRED" in reason or (
        settings.tls_cert is None and "HANDSHAKE_FAILURE" in reason
    ):
        return (
            f"TLS: {address} requires a client certificate (mutual TLS): "
            "set REDIS_TLS_CERT and REDIS_TLS_KEY"
        )
    if "ALERT" in reason and settings.tls_cert is not None:
        return (
            f"TLS: {address} refused the client certificate of REDIS_TLS_CERT "
            f"({reason.lower().replace('_', ' ')})"
        )
    return f"TLS: handshake with {address} failed ({reason})"


async def _close(writer: asyncio.StreamWriter) -> None:
    # Aborted, not closed: a TLS close would wait for the server's close_notify
    # before releasing the socket, past the diagnosis' deadline (see NodeLink._fail).
    writer.transport.abort()
    # The server may already have closed or reset the connection, or sent a TLS
    # alert; either way the socket is released.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
