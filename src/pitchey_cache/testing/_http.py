"""An ASGI app served on a loopback port from a background thread, and a tap in front
of an app that records each request and answers 500 or hangs when told to.

uvicorn is imported when a server starts, not when this module is imported.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Self

from pitchey_cache.devtools.local_redis import LOOPBACK, free_port

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AppServer:
    """An ASGI app under uvicorn in a background thread, on a free loopback port.

    The port is kept across :meth:`stop` and :meth:`start`, so a test can take the
    server down and bring it back where its clients expect it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<AppServer {self.url} {'running' if self._server else 'stopped'}>"

    def start(self, timeout: float = 10.0) -> None:
        import uvicorn  # noqa: PLC0415 - only a test that serves HTTP pays for it

        # log_config=None leaves logging alone, so access lines reach pytest's caplog.
        # A stop waits at most 2 s for requests still in flight.
        config = uvicorn.Config(
            self.app,
            host=LOOPBACK,
            port=self.port,
            log_config=None,
            log_level="info",
            timeout_graceful_shutdown=2,
        )
        server = self._server = uvicorn.Server(config)
        thread = self._thread = threading.Thread(
            target=server.run, name=f"http-{self.port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut the server down: it stops listening, so new connections are refused."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)
            if thread.is_alive():
                raise RuntimeError(f"the HTTP server on {self.url} did not stop within 10 s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Fault(StrEnum):
    """What a :class:`GatewayTap` does with a request instead of passing it on."""

    NONE = "none"
    ERROR_500 = "error-500"
    # Read the request, then wait until the fault is cleared; the request then runs
    # late, as on a frozen server that comes back.
    HANG = "hang"
    # Run the request, then send the reply's headers and a space every 0.1 s (JSON
    # allows leading whitespace) for ``trickle_s`` before the reply itself: every read
    # completes well within a timeout, the whole reply does not.
    TRICKLE = "trickle"


@dataclass
class Exchange:
    """One HTTP request as the tap saw it, and what was answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    client: tuple[str, int] | None
    body: bytes = b""
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)


def _header_dict(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}


class GatewayTap:
    """An ASGI app in front of another: records every request and its answer, and
    answers 500 or hangs instead when told to.

    The tap reads a request body before passing the request on, so a hung request
    runs late with its body, as on a frozen server; beyond its first 64 KiB a body is
    streamed through unread, so the app behind still meets an oversized body as it comes.

    ``fault`` is read on each request, so a test switches it from its own thread;
    ``app`` may be replaced while the server is stopped.
    """

    def __init__(self, app: ASGIApp, *, hang_limit_s: float = 10.0, trickle_s: float = 2.5) -> None:
        self.app = app
        self.fault = Fault.NONE
        self.exchanges: list[Exchange] = []
        self._hang_limit_s = hang_limit_s
        self._trickle_s = trickle_s

    def requests(self) -> list[Exchange]:
        """A snapshot of the exchanges so far (the server thread appends to the list)."""
        return list(self.exchanges)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, receive = await _buffered(receive)
        exchange = Exchange(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=_header_dict(scope["headers"]),
            client=scope.get("client"),
            body=body,
        )
        self.exchanges.append(exchange)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_headers = _header_dict(message.get("headers", []))
            await send(message)

        fault = self.fault
        if fault is Fault.ERROR_500:
            await recording_send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await recording_send({"type": "http.response.body", "body": b"Internal Server Error"})
            return
        if fault is Fault.HANG:
            await self._hang()
        elif fault is Fault.TRICKLE:
            await self.app(scope, receive, self._trickling(recording_send))
            return
        await self.app(scope, receive, recording_send)

    async def _hang(self) -> None:
        """Wait while the fault lasts, at most ``hang_limit_s``."""
        deadline = time.monotonic() + self._hang_limit_s
        # Polled: the test's thread switches the fault, and could not safely set an
        # asyncio.Event that belongs to the server thread's loop.
        while self.fault is Fault.HANG and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def _trickling(self, send: Send) -> Send:
        async def trickling_send(message: Message) -> None:
            if message["type"] != "http.response.start":
                await send(message)
                return
            # Without a length, uvicorn sends the reply chunked, spaces first.
            headers = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
            await send({**message, "headers": headers})
            deadline = time.monotonic() + self._trickle_s
            while time.monotonic() < deadline:
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.1)

        return trickling_send


_RECORDED_BODY_BYTES = 64 * 1024


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """Read the request body, up to 64 KiB; return that and a ``receive`` that replays it
    before the rest."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more and size <= _RECORDED_BODY_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return body, replay
