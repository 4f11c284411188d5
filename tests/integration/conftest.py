"""Fixtures that start real redis-server processes on free loopback ports, and the
Upstash gateway in front of one: the project's own tests on ``pitchey_cache.testing``,
the kit users get, under the names these tests grew up with."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import glide
import httpx
import pytest
from starlette.types import ASGIApp

from pitchey_cache import Secret, Settings
from pitchey_cache.devtools.local_redis import LOOPBACK, RedisServer, free_port
from pitchey_cache.testing import (
    GATEWAY_REDIS_TIMEOUT_MS,
    AppServer,
    Exchange,
    Fault,
    GatewayTap,
    upstash_gateway_app,
)

__all__ = [
    "GATEWAY_REDIS_TIMEOUT_MS",
    "PATIENT",
    "Exchange",
    "Fault",
    "GatewayServer",
    "GatewayTap",
    "RedisServerFactory",
    "Served",
    "StartServe",
    "make_gateway_app",
    "raw_client",
    "redis_settings",
    "upstash_settings",
]


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
# Settings that reach these servers, and a client independent of the code under test

# Generous: tests that check answers, not speed, must not flake on a busy machine.
PATIENT: dict[str, Any] = {"command_timeout_ms": 2000, "connect_timeout_ms": 2000}


def redis_settings(server: RedisServer, **overrides: Any) -> Settings:
    """The native-redis tier (then in-memory) on ``server``."""
    return Settings(redis_host=server.host, redis_port=server.port, **{**PATIENT, **overrides})


def upstash_settings(gateway: AppServer | str, token: str, **overrides: Any) -> Settings:
    """The upstash-redis tier (then in-memory) through the gateway at ``gateway``."""
    url = gateway if isinstance(gateway, str) else gateway.url
    return Settings(upstash_url=url, upstash_token=Secret(token), **{**PATIENT, **overrides})


async def raw_client(server: RedisServer) -> glide.GlideClient:
    """A plain glide client, independent of the code under test."""
    config = glide.GlideClientConfiguration(
        [glide.NodeAddress(server.host, server.port)], request_timeout=2000
    )
    return await glide.GlideClient.create(config)


# ---------------------------------------------------------------------------
# The Upstash gateway: pitchey_cache.testing's, under the names these tests use.

# The gateway serves under uvicorn in a thread: the kit's AppServer serves any ASGI app.
GatewayServer = AppServer


def make_gateway_app(server: RedisServer, token: str) -> ASGIApp:
    """A fresh gateway app for ``server`` (one uvicorn run each)."""
    return upstash_gateway_app(server.address, token)


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


# ---------------------------------------------------------------------------
# `pitchey-cache serve` as a user runs it: a process of its own

SERVE_READY_WITHIN_S = 30.0


@dataclass
class Served:
    """A ``pitchey-cache serve`` process on a free loopback port."""

    url: str
    process: subprocess.Popen[str]

    def output(self) -> str:
        """Stop the server (by its PID, SIGTERM then SIGKILL) and return all it printed."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate(timeout=10)
        return out

    stop = output

    def health_when_ready(self, within: float = SERVE_READY_WITHIN_S) -> httpx.Response:
        """GET /api/health/cache once the server answers, polling for a bounded time."""
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                return httpx.get(f"{self.url}/api/health/cache", timeout=2.0)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"serve did not answer within {within:g}s:\n{self.output()}")
                time.sleep(0.1)


StartServe = Callable[[Mapping[str, str]], Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServe]:
    """Start ``pitchey-cache serve`` with exactly the environment given, in an empty
    directory (no ``.env``); every one started is stopped after the test."""
    started: list[Served] = []

    def start(env: Mapping[str, str]) -> Served:
        port = free_port()
        # Our own interpreter and module, with an argument list built here; no shell.
        process = subprocess.Popen(
            [sys.executable, "-m", "pitchey_cache", "serve"],
            cwd=tmp_path,
            env={**env, "CACHE_HTTP_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        served = Served(f"http://{LOOPBACK}:{port}", process)
        started.append(served)
        return served

    yield start
    for served in started:
        served.output()
