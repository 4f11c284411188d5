"""A plain Redis connection to one node, for heartbeats and one-off checks.

Glide hides a dead node behind its request timeout: a killed server's
connection is refused at once, but requests wait inside the driver until
REDIS_COMMAND_TIMEOUT. A :class:`NodeLink` is a connection of our own to one
node, with TLS and AUTH as the tier has them, that notices at once when the
node closes it (``lost``) and says in plain words why it could not connect:
refused, timed out, authentication, TLS, LOADING. Replies are parsed by
hiredis, the maintained C parser redis-py uses; after ``HELLO 3`` it also
tells RESP3 push messages from replies, and those go to ``on_push``.

Nothing here runs on a call's path: heartbeats, probes, ``check`` and the
near cache's invalidation listeners use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import hiredis

from pitchey_cache.config import NodeAddress, Secret, Settings
from pitchey_cache.tiers.tls_diagnosis import client_context, diagnose_tls

__all__ = ["Credentials", "LinkError", "NodeLink"]

_READ_CHUNK = 16 * 1024
# How long closing waits for the transport to be released before leaving it.
_CLOSE_WITHIN_S = 1.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """How a tier authenticates, and the variables to name when that fails."""

    username: str | None
    password: Secret | None
    username_variable: str
    password_variable: str


class LinkError(Exception):
    """A node link could not be opened or was lost; ``reason`` is for people, without secrets.

    ``unneeded_password`` is set when a password is configured for a server
    that requires none (Redis refuses the AUTH, everything else works).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NodeLink:
    """One connection to ``address``: send commands, await replies in order, notice loss."""

    def __init__(
        self,
        address: NodeAddress,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        cluster: bool = False,
    ) -> None:
        self.address = address
        self.cluster = cluster
        self._writer = writer
        self._parser = hiredis.Reader()
        self._waiting: deque[asyncio.Future[object]] = deque()
        # Resolves with the reason when the node closes or resets the connection.
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.unneeded_password = False
        # Called with each RESP3 push (``[b"invalidate", [keys]]``...); pushes are
        # dropped while it is None. Never a reply: those go to the callers in order.
        self.on_push: Callable[[list[object]], None] | None = None
        self._reading = asyncio.create_task(
            self._read(reader), name=f"pitchey-cache link {address}"
        )

    def __repr__(self) -> str:
        state = "lost" if self.lost.done() else "open"
        return f"<NodeLink {self.address} [{state}, {len(self._waiting)} waiting]>"

    @classmethod
    async def open(
        cls,
        address: NodeAddress,
        settings: Settings,
        credentials: Credentials,
        *,
        within: float,
        cluster: bool = False,
    ) -> NodeLink:
        """Connect, authenticate and PING within ``within`` seconds; raise LinkError if not.

        ``cluster``: the node is a cluster member, and :meth:`ping` asks whether it
        serves keys (its own ``cluster_state``), not only whether it answers.
        """
        timeout = within
        context = client_context(settings) if settings.tls_enabled else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    address.host,
                    address.port,
                    ssl=context,
                    server_hostname=address.host if context is not None else None,
                )
        except TimeoutError:
            raise LinkError(f"no connection within {timeout:g}s") from None
        except ConnectionRefusedError:
            raise LinkError("connection refused") from None
        except ssl.SSLError:
            problem = await diagnose_tls((address,), settings, within=timeout)
            raise LinkError(problem or "TLS handshake failed") from None
        except OSError as exc:
            raise LinkError(_os_reason(exc)) from None
        link = cls(address, reader, writer, cluster=cluster)
        try:
            async with asyncio.timeout(timeout):
                await link._handshake(credentials)
        except TimeoutError:
            link.close()
            raise LinkError(f"connected, but no answer within {timeout:g}s") from None
        except BaseException:
            link.close()
            raise
        return link

    async def _handshake(self, credentials: Credentials) -> None:
        if credentials.password is not None:
            args = ["AUTH", credentials.password.reveal()]
            if credentials.username:
                args.insert(1, credentials.username)
            reply = await self.command(*args)
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                if "without any password configured" in text:
                    # Redis refuses AUTH when it has no password; the connection works.
                    self.unneeded_password = True
                else:
                    raise LinkError(_auth_problem(text, credentials))
        reply = await self.command("PING")
        if isinstance(reply, hiredis.ReplyError):
            raise LinkError(_reply_problem(str(reply), credentials))

    async def command(self, *args: str) -> object:
        """Send one command and return its reply (a ``hiredis.ReplyError`` for an error reply)."""
        if self.lost.done():
            raise LinkError(self.lost.result())
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._writer.write(hiredis.pack_command(args))  # type: ignore[arg-type]  # hiredis's stub types a 1-tuple
        return await waiter

    async def ping(self) -> None:
        """Whether the node serves keys now; raise LinkError with a diagnosis when not.

        A cluster member is asked CLUSTER INFO instead of PING: a node whose own
        view is ``cluster_state:fail`` answers PING but refuses every key with
        CLUSTERDOWN (just restarted, or another shard lost its master while full
        coverage is required), and the driver retries those until its timeout.
        """
        reply = await self.command(*(("CLUSTER", "INFO") if self.cluster else ("PING",)))
        if isinstance(reply, hiredis.ReplyError):
            raise LinkError(_reply_problem(str(reply), None))
        if self.cluster and isinstance(reply, bytes) and b"cluster_state:ok" not in reply:
            raise LinkError("cluster_state is fail here: it refuses keys (CLUSTERDOWN)")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "connection closed by the node"
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                self._parser.feed(data)
                while (reply := self._parser.gets()) is not False:
                    if isinstance(reply, hiredis.PushNotification):
                        if self.on_push is not None:
                            self.on_push(list(reply))
                    elif self._waiting:
                        waiter = self._waiting.popleft()
                        if not waiter.done():
                            waiter.set_result(reply)
        except (OSError, ssl.SSLError) as exc:
            reason = _os_reason(exc)
        except hiredis.ProtocolError:
            reason = "the node sent something that is not RESP"
        finally:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(LinkError(reason))
        # Aborted, not closed: a TLS close waits for the server's close_notify (up to
        # 30 s) before it releases the socket, and a socket still held when the event
        # loop ends leaks (ResourceWarning: unclosed transport). Nothing is left to send.
        self._writer.transport.abort()

    def close(self) -> None:
        """Close the connection; replies still awaited fail with LinkError."""
        self._reading.cancel()
        self._fail("closed")

    async def aclose(self) -> None:
        """Close, and wait (briefly) until the socket is released."""
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(_CLOSE_WITHIN_S):
                await self._writer.wait_closed()


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the node"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"connection failed ({text})"


def _auth_problem(text: str, credentials: Credentials) -> str:
    code = text.split(" ", 1)[0]
    user = credentials.username_variable
    return f"authentication failed ({code}): check {credentials.password_variable} and {user}" + (
        "" if credentials.username else f" ({user} unset: the default user)"
    )


def _reply_problem(text: str, credentials: Credentials | None) -> str:
    code = text.split(" ", 1)[0]
    if code == "NOAUTH":
        variable = "its password" if credentials is None else credentials.password_variable
        return f"the server requires a password (NOAUTH): set {variable}"
    if code == "LOADING":
        return "the server is loading its dataset (LOADING)"
    if code in {"WRONGPASS", "NOPERM"}:
        return f"refused ({code})"
    return f"answered an error ({code})"
