"""``pitchey-cache check`` and ``pitchey-cache serve`` as a user runs them: a real process.

Every process runs in an empty temporary folder (so no stray ``.env`` is read) with
an environment cleared of every variable pitchey-cache reads, plus the ones a test
sets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from pitchey_cache.devtools.local_redis import RedisServer, free_port
from tests.integration.conftest import RedisServerFactory, Served, StartServe

PASSWORD = "pw-Zq8-not-for-your-eyes-7731"
# Short timeouts keep a probe of a dead port quick.
QUICK = {"REDIS_CONNECT_TIMEOUT": "500", "REDIS_COMMAND_TIMEOUT": "500"}
OWN_PREFIXES = ("REDIS_", "CACHE_", "UPSTASH_")
EXIT_OK, EXIT_UNREACHABLE, EXIT_CONFIG = 0, 1, 2
SERVE_READY_WITHIN_S = 20.0


def environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(QUICK)
    env.update(variables)
    return env


def for_server(server: RedisServer, **variables: str) -> dict[str, str]:
    return environment(REDIS_HOST=server.host, REDIS_PORT=str(server.port), **variables)


def for_dead_port(**variables: str) -> dict[str, str]:
    return environment(REDIS_HOST="127.0.0.1", REDIS_PORT=str(free_port()), **variables)


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def pitchey_cache(cwd: Path, env: dict[str, str], *args: str) -> Finished:
    # Our own interpreter and module, with an argument list built here; no shell.
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pitchey_cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr)


# -- check ---------------------------------------------------------------------------


def test_check_names_a_bad_variable_and_exits_2(tmp_path: Path) -> None:
    done = pitchey_cache(tmp_path, environment(REDIS_PORT="abc"), "check")

    assert done.returncode == EXIT_CONFIG, done.output
    assert "REDIS_PORT" in done.stderr
    assert "abc" in done.stderr


def test_check_reports_an_unreachable_tier_and_exits_1(tmp_path: Path) -> None:
    done = pitchey_cache(tmp_path, for_dead_port(), "check")

    assert done.returncode == EXIT_UNREACHABLE, done.output
    assert "UNREACHABLE" in done.stdout
    assert "native-redis" in done.stdout
    assert "in-memory" in done.stdout


def test_check_passes_against_a_live_server(tmp_path: Path, redis_server: RedisServer) -> None:
    done = pitchey_cache(tmp_path, for_server(redis_server), "check")

    assert done.returncode == EXIT_OK, done.output
    assert "UNREACHABLE" not in done.output
    assert f"native-redis {redis_server.address}" in done.stdout
    assert "in-memory" in done.stdout


def test_check_never_prints_the_password(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    guarded = redis_server_factory(password=PASSWORD)
    other = redis_server_factory(password="some-other-password")
    runs = {
        "right password": (for_server(guarded, REDIS_PASSWORD=PASSWORD), EXIT_OK),
        "wrong password": (for_server(other, REDIS_PASSWORD=PASSWORD), EXIT_UNREACHABLE),
        "dead port": (for_dead_port(REDIS_PASSWORD=PASSWORD), EXIT_UNREACHABLE),
        "bad variable": (for_server(guarded, REDIS_PASSWORD=PASSWORD, REDIS_DB="x"), EXIT_CONFIG),
    }
    for name, (env, expected) in runs.items():
        done = pitchey_cache(tmp_path, env, "check")
        assert done.returncode == expected, f"{name}: {done.output}"
        assert PASSWORD not in done.output, name
    # The variable itself is listed, with its value redacted.
    assert "REDIS_PASSWORD=" in pitchey_cache(tmp_path, runs["right password"][0], "check").stdout


def test_check_says_why_a_server_refuses_in_plain_words(
    tmp_path: Path, redis_server_factory: RedisServerFactory
) -> None:
    guarded = redis_server_factory(password=PASSWORD)
    open_server = redis_server_factory()
    runs = {
        "wrong password": (
            for_server(guarded, REDIS_PASSWORD="not-it"),
            "authentication failed (WRONGPASS): check REDIS_PASSWORD and REDIS_USERNAME",
        ),
        "no password": (
            for_server(guarded),
            "the server requires a password (NOAUTH): set REDIS_PASSWORD",
        ),
        "dead port": (for_dead_port(), "connection refused"),
    }
    for name, (env, reason) in runs.items():
        done = pitchey_cache(tmp_path, env, "check")
        assert done.returncode == EXIT_UNREACHABLE, f"{name}: {done.output}"
        assert reason in done.stdout, f"{name}: {done.stdout}"
        assert "timed out" not in done.stdout, name

    # A password set for a server that has none works, but deserves a word.
    done = pitchey_cache(tmp_path, for_server(open_server, REDIS_PASSWORD="stray"), "check")
    assert done.returncode == EXIT_OK, done.output
    assert "requires no password, but REDIS_PASSWORD is set" in done.stdout
    assert "stray" not in done.output


def test_check_warns_about_settings_that_contradict_each_other(tmp_path: Path) -> None:
    env = environment(
        CACHE_ENABLED="false",
        REDIS_CLUSTER_ENABLED="true",
        REDIS_CLUSTER_NODES="127.0.0.1:7001",
        REDIS_CONNECTION_POOL_SIZE="10",
    )
    done = pitchey_cache(tmp_path, env, "check")

    assert done.returncode == EXIT_OK, done.output
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, done.stdout
    assert "REDIS_CLUSTER_ENABLED=true is ignored" in warnings[0]
    assert "REDIS_CONNECTION_POOL_SIZE=10 has no effect on this chain" in warnings[1]
    assert "1. in-memory" in done.stdout


def test_check_reads_a_dot_env_file_in_the_working_directory(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # The counterpart of running every other test in an empty folder.
    (tmp_path / ".env").write_text(f"REDIS_HOST=127.0.0.1\nREDIS_PORT={redis_server.port}\n")

    done = pitchey_cache(tmp_path, environment(), "check")

    assert done.returncode == EXIT_OK, done.output
    assert f"native-redis {redis_server.address}" in done.stdout


# -- serve ---------------------------------------------------------------------------


def health_when_ready(served: Served) -> httpx.Response:
    return served.health_when_ready(SERVE_READY_WITHIN_S)


def test_serve_with_no_redis_serves_from_memory_and_says_so(serve: StartServe) -> None:
    served = serve(for_dead_port(REDIS_PASSWORD=PASSWORD))

    response = health_when_ready(served)
    output = served.output()

    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "in-memory"
    assert body["status"] == "degraded"
    assert "serving from in-memory" in output
    assert PASSWORD not in output
    assert PASSWORD not in response.text


def test_serve_with_a_live_redis_is_healthy(serve: StartServe, redis_server: RedisServer) -> None:
    served = serve(for_server(redis_server))

    response = health_when_ready(served)

    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "native-redis"
    assert body["status"] == "healthy"
    assert body["cluster"]["nodes"][0]["address"] == redis_server.address
    assert "serving from native-redis" in served.output()


def test_serve_admin_endpoints_are_closed_without_a_token(serve: StartServe) -> None:
    served = serve(for_dead_port())
    health_when_ready(served)

    response = httpx.get(f"{served.url}/api/admin/cache/stats", timeout=2.0)

    assert response.status_code == 403
    assert "CACHE_ADMIN_TOKEN" in response.text
