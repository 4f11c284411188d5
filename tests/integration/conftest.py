"""Fixtures that start real redis-server processes on free loopback ports, and the
Upstash gateway in front of one."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pitchey_cache.devtools.local_redis import LOOPBACK, RedisServer, free_port
from pitchey_cache.devtools.upstash_gateway import create_gateway_app


class RedisServerFactory:
    """Starts as many servers as a test needs, each in its own folder; stops them all."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._servers: list[RedisServer] = []

    def __call__(
        self,
        *,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> RedisServer:
        server = RedisServer(
            workdir=self._workdir / f"redis-{len(self._servers)}",
            password=password,
            extra_args=extra_args,
        )
        # Registered before starting, so a server that fails halfway is still stopped.
        self._servers.append(server)
        if start:
            server.start()
        return server

    def stop_all(self) -> None:
        for server in self._servers:
            server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path) as server:
        yield server


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[RedisServerFactory]:
    factory = RedisServerFactory(tmp_path)
    yield factory
    factory.stop_all()


# ---------------------------------------------------------------------------
# The Upstash gateway

# Small, so outage tests finish fast: a dead or frozen Redis costs the gateway at most
# this (plus the connect timeout) before it answers 503.
GATEWAY_REDIS_TIMEOUT_MS = 400


def make_gateway_app(server: RedisServer, token: str) -> Starlette:
    """A fresh gateway app for ``server``. An app serves one uvicorn run: its lifespan
    closes its Redis client when the server stops."""
    return create_gateway_app(
        f"redis://{server.address}",
        token,
        command_timeout_ms=GATEWAY_REDIS_TIMEOUT_MS,
        connect_timeout_ms=GATEWAY_REDIS_TIMEOUT_MS,
    )


class GatewayServer:
    """An ASGI app under uvicorn in a background thread, on a loopback port.

    The port is kept across :meth:`stop` and :meth:`start`, so a test can shut the
    server down and bring it back where its clients expect it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
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
            target=server.run, name=f"gateway-{self.port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut the server down: it stops listening, so new connections are refused."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)
            if thread.is_alive():
                raise RuntimeError(f"the gateway on {self.url} did not stop within 10 s")


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
    """One HTTP request as the gateway saw it, and what was answered."""

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
    """An ASGI app in front of the gateway: records every request and its answer, and
    answers 500 or hangs instead when told to.

    The tap reads a request body before passing the request on, so a hung request
    runs late with its body, as on a frozen server; beyond its first 64 KiB a body is
    streamed through unread, so the gateway still meets an oversized body as it comes.

    ``fault`` is read on each request, so a test switches it from its own thread;
    ``app`` may be replaced while the server is stopped (see :func:`make_gateway_app`).
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


@pytest.fixture
def token() -> str:
    """The bearer token the ``gateway`` fixture expects."""
    return secrets.token_urlsafe(24)


@pytest.fixture
def gateway_tap(redis_server: RedisServer, token: str) -> GatewayTap:
    return GatewayTap(make_gateway_app(redis_server, token))


@pytest.fixture
def gateway(gateway_tap: GatewayTap) -> Iterator[GatewayServer]:
    """The gateway in front of ``redis_server``, behind ``gateway_tap``, on a free port."""
    server = GatewayServer(gateway_tap)
    server.start()
    yield server
    server.stop()
