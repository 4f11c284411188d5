"""Fixtures that start real redis-server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pitchey_cache.devtools.local_redis import RedisServer


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
