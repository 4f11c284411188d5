"""``pitchey-cache status`` as a script or a container health check runs it: a real
process asking a real server, over a real ``redis-server`` that the tests kill.

Every process runs in an empty temporary folder with an environment cleared of
every variable pitchey-cache reads, plus the ones a test sets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from pitchey_cache import Cache, Secret, Settings, create_app
from pitchey_cache.devtools.local_redis import LOOPBACK, RedisServer, free_port
from pitchey_cache.web.app import HEALTH_PATH
from tests.integration.conftest import GatewayServer

TOKEN = "st4tus-cli-T0ken-w7Qe"
OWN_PREFIXES = ("REDIS_", "CACHE_", "UPSTASH_")
EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNHEALTHY = 0, 1, 2


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def status(cwd: Path, *args: str, **variables: str) -> Finished:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(variables)
    started = time.monotonic()
    # Our own interpreter and module, with an argument list built here; no shell.
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pitchey_cache", "status", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def table_row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        if line.split()[:1] == [first_cell]:
            return line.split()
    raise AssertionError(f"no row for {first_cell!r} in:\n{text}")


@dataclass(frozen=True)
class Service:
    url: str
    port: int
    redis: RedisServer

    def wait_for(self, status: str, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        seen = None
        while time.monotonic() < deadline:
            seen = httpx.get(self.url + HEALTH_PATH).json()["status"]
            if seen == status:
                return
            time.sleep(0.05)
        raise AssertionError(f"health stayed {seen!r}, expected {status!r}")


@pytest.fixture
def service(redis_server: RedisServer) -> Iterator[Service]:
    """The app over ``redis_server``, with timings that notice a kill within a second."""
    cache = Cache(
        Settings(
            redis_host=redis_server.host,
            redis_port=redis_server.port,
            admin_token=Secret(TOKEN),
            command_timeout_ms=200,
            connect_timeout_ms=200,
            max_failures=2,
            max_retries=0,
            health_check_interval_ms=200,
        )
    )
    http = GatewayServer(create_app(cache))
    http.start()
    try:
        yield Service(http.url, http.port, redis_server)
    finally:
        http.stop()


def test_healthy_exits_0_and_shows_the_serving_tier_and_its_node(
    service: Service, tmp_path: Path
) -> None:
    done = status(tmp_path, "--url", service.url)

    assert done.returncode == EXIT_HEALTHY, done.output
    assert done.stdout.startswith(f"pitchey-cache at {service.url}: HEALTHY\n")
    assert table_row(done.stdout, "native-redis")[:3] == ["native-redis", "*", "1/1"]
    assert table_row(done.stdout, service.redis.address)[1] == "yes"
    assert "need the admin token" in done.stdout
    assert done.stderr == ""


def test_the_token_from_the_environment_adds_every_tier_and_is_never_printed(
    service: Service, tmp_path: Path
) -> None:
    done = status(tmp_path, "--url", service.url, CACHE_ADMIN_TOKEN=TOKEN)

    assert done.returncode == EXIT_HEALTHY, done.output
    assert table_row(done.stdout, "native-redis")[1:4] == ["*", "healthy", "1/1"]
    assert table_row(done.stdout, "in-memory")[1:3] == ["healthy", "0/0"]
    node = table_row(done.stdout, service.redis.address)
    assert node[1:4] == ["native-redis", "master", "yes"]
    assert "cluster: no Redis Cluster is configured" in done.stdout
    assert TOKEN not in done.output


def test_a_killed_redis_server_is_degraded_exit_1(service: Service, tmp_path: Path) -> None:
    service.redis.kill()
    service.wait_for("degraded")

    public = status(tmp_path, "--url", service.url)
    admin = status(tmp_path, "--url", service.url, CACHE_ADMIN_TOKEN=TOKEN)

    assert public.returncode == EXIT_DEGRADED, public.output
    assert public.stdout.startswith(f"pitchey-cache at {service.url}: DEGRADED\n")
    assert "serving from in-memory (not distributed)" in public.stdout
    assert table_row(public.stdout, service.redis.address)[1] == "no"
    assert admin.returncode == EXIT_DEGRADED, admin.output
    assert table_row(admin.stdout, "native-redis")[1] == "down"
    assert table_row(admin.stdout, "in-memory")[1] == "*"
    assert "node-down" in admin.stdout
    assert "failover" in admin.stdout

    service.redis.restart()
    service.wait_for("healthy")
    assert status(tmp_path, "--url", service.url).returncode == EXIT_HEALTHY


def test_a_wrong_token_is_said_on_stderr_and_the_exit_code_stays_the_healths(
    service: Service, tmp_path: Path
) -> None:
    wrong = "not-the-T0ken-5521"

    done = status(tmp_path, "--url", service.url, CACHE_ADMIN_TOKEN=wrong)

    assert done.returncode == EXIT_HEALTHY, done.output
    assert done.stderr == (
        f"pitchey-cache status: the admin token was refused (HTTP 401) by "
        f"{service.url}/api/admin/cache/stats; showing the public health only\n"
    )
    assert done.stdout.startswith(f"pitchey-cache at {service.url}: HEALTHY\n")
    assert "need the admin token" not in done.stdout
    assert wrong not in done.output
    assert TOKEN not in done.output


def test_the_url_defaults_to_the_serve_variables_whatever_else_is_set(
    service: Service, tmp_path: Path
) -> None:
    done = status(
        tmp_path,
        CACHE_HTTP_HOST="0.0.0.0",  # noqa: S104 - what serve binds in a container
        CACHE_HTTP_PORT=str(service.port),
        # Malformed settings that `serve` would refuse are none of `status`'s business.
        REDIS_PORT="not-a-port",
        REDIS_CLUSTER_ENABLED="maybe",
    )

    assert done.returncode == EXIT_HEALTHY, done.output
    assert done.stdout.startswith(f"pitchey-cache at http://{LOOPBACK}:{service.port}: HEALTHY")


def test_a_cache_that_is_not_started_is_unhealthy_exit_2(tmp_path: Path) -> None:
    # Mounted in an app whose lifespan does not start the cache: health answers 503.
    outer = Starlette(routes=[Mount("/", app=create_app(Cache(Settings(cache_enabled=False))))])
    http = GatewayServer(outer)
    http.start()
    try:
        done = status(tmp_path, "--url", http.url)
    finally:
        http.stop()

    assert done.returncode == EXIT_UNHEALTHY, done.output
    assert done.stdout.startswith(f"pitchey-cache at {http.url}: UNHEALTHY\n")


def test_nothing_listening_exits_2_with_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"

    done = status(tmp_path, "--url", url)

    assert done.returncode == EXIT_UNHEALTHY
    assert done.stdout == ""
    assert done.stderr.startswith(f"pitchey-cache status: cannot connect to {url}{HEALTH_PATH}: ")
    assert done.stderr.count("\n") == 1


def test_a_server_that_never_answers_exits_2_within_the_timeout(tmp_path: Path) -> None:
    # The kernel accepts the connection into the backlog; nobody ever reads it.
    with socket.create_server((LOOPBACK, 0)) as silent:
        url = f"http://{LOOPBACK}:{silent.getsockname()[1]}"

        done = status(tmp_path, "--url", url, "--timeout", "0.5")

    assert done.returncode == EXIT_UNHEALTHY
    assert done.stderr == f"pitchey-cache status: no answer from {url}{HEALTH_PATH} within 0.5s\n"
    # The interpreter's start-up, plus the half second.
    assert done.seconds < 10
