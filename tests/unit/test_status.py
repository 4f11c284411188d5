"""``pitchey-cache status`` without a network: the table and exit code from real bodies
(caches over fake tiers), and the requests through httpx's mock transport."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from pitchey_cache import Cache, Secret, Settings
from pitchey_cache.cli import main
from pitchey_cache.status import (
    EXIT_DEGRADED,
    EXIT_HEALTHY,
    EXIT_UNHEALTHY,
    ServiceUnreachable,
    Snapshot,
    add_arguments,
    exit_code,
    fetch,
    render,
    run,
)
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.web.app import CLUSTER_PATH, HEALTH_PATH, STATS_PATH
from tests.unit.fakes import FakeClock, FakeTier, fake_tier

TOKEN = "st4tus-T0ken-q9Lx"
URL = "http://cache.internal:8080"
FAILOVER_TIMEOUT_MS = 1000
HEALTH_INTERVAL_MS = 30_000


# -- bodies from real caches -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def started(*tiers: FakeTier) -> AsyncIterator[Cache]:
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL_MS / 1000)
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    settings = Settings(
        max_failures=2,
        max_retries=0,
        failover_timeout_ms=FAILOVER_TIMEOUT_MS,
        health_check_interval_ms=HEALTH_INTERVAL_MS,
        admin_token=Secret(TOKEN),
    )
    async with Cache(settings, tiers=[*tiers, memory], clock=clock) as cache:
        yield cache


async def snapshot_of(cache: Cache, *, admin: bool) -> Snapshot:
    if not admin:
        return Snapshot(URL, await cache.health())
    return Snapshot(
        URL,
        await cache.health(),
        token_given=True,
        stats=await cache.stats(),
        cluster=await cache.cluster_info(),
    )


def row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row starting with ``first_cell``."""
    for line in text.splitlines():
        cells = line.split()
        if cells[:1] == [first_cell]:
            return cells
    raise AssertionError(f"no row for {first_cell!r} in:\n{text}")


async def test_a_healthy_cache_without_the_token_shows_its_first_tier_and_exits_0() -> None:
    async with started(fake_tier("native-redis", address="10.0.0.5:6379")) as cache:
        await cache.set("a", 1)
        await cache.get("a")
        snapshot = await snapshot_of(cache, admin=False)

    text = render(snapshot)

    assert exit_code(snapshot) == EXIT_HEALTHY
    assert text.startswith(f"pitchey-cache at {URL}: HEALTHY\n")
    assert "serving from native-redis (distributed)" in text
    # TIER ACTIVE NODES CALLS FAILED SUCCESS AVG-MS
    assert row(text, "native-redis")[:6] == ["native-redis", "*", "1/1", "2", "0", "100.00%"]
    assert row(text, "10.0.0.5:6379")[1:3] == ["yes", "0"]
    assert "need the admin token: set CACHE_ADMIN_TOKEN" in text


async def test_a_degraded_cache_with_the_token_shows_every_tier_node_and_event_and_exits_1() -> (
    None
):
    remote = fake_tier("native-redis", address="10.0.0.5:6379")
    async with started(remote) as cache:
        remote.down = True
        await cache.set("a", 1)
        await cache.get("a")
        snapshot = await snapshot_of(cache, admin=True)

    text = render(snapshot)

    assert exit_code(snapshot) == EXIT_DEGRADED
    assert text.startswith(f"pitchey-cache at {URL}: DEGRADED\n")
    assert "serving from in-memory (not distributed)" in text
    # TIER ACTIVE CONDITION NODES CALLS FAILED SUCCESS AVG-MS JOURNAL
    assert row(text, "native-redis")[1:6] == ["down", "0/1", "2", "2", "0.00%"]
    assert row(text, "native-redis")[-1] == "pending"
    assert row(text, "in-memory")[1:3] == ["*", "healthy"]
    # NODE TIER ROLE HEALTHY FAILURES LAST-CHECK POOL LAST-ERROR
    node = row(text, "10.0.0.5:6379")
    assert node[1:5] == ["native-redis", "master", "no", "2"]
    assert "down" in node[-1]
    assert "calls: 1 hits, 0 misses (hit rate 100.00%), 1 sets" in text
    assert "failover: 1 failovers, 0 failbacks" in text
    assert "cluster: no Redis Cluster is configured" in text
    assert "recent events (2 of 2 kept, oldest first):" in text
    assert row(text, "2024-10-24T12:00:00.000Z")[1:3] == ["node-down", "native-redis"]
    assert "admin token" not in text


async def test_a_cluster_shows_roles_slots_and_its_state() -> None:
    cluster = fake_tier("redis-cluster", address="10.0.0.1:7000")
    cluster.node.slots = ((0, 8191), (8192, 16383))
    async with started(cluster) as cache:
        setattr(cluster, "cluster_state", "ok")  # noqa: B010 - read with getattr by the cache
        snapshot = await snapshot_of(cache, admin=True)
        public = await snapshot_of(cache, admin=False)

    text = render(snapshot)

    assert "SLOTS" in text
    assert "0-8191,8192-16383" in row(text, "10.0.0.1:7000")
    assert "cluster: state ok, condition healthy, redis-cluster" in text
    assert row(render(public), "redis-cluster")[:2] == ["redis-cluster", "*"]


async def test_a_cache_that_is_not_started_is_unhealthy_exit_2() -> None:
    cache = Cache(Settings(cache_enabled=False))
    snapshot = Snapshot(URL, await cache.health())

    assert exit_code(snapshot) == EXIT_UNHEALTHY
    assert render(snapshot).startswith(f"pitchey-cache at {URL}: UNHEALTHY\n")


@pytest.mark.parametrize("status", [None, "", "HEALTHY", "starting", 0])
def test_a_status_it_does_not_know_counts_as_unhealthy(status: object) -> None:
    assert exit_code(Snapshot(URL, {"status": status})) == EXIT_UNHEALTHY


@pytest.mark.parametrize(
    "health",
    [
        {"status": "healthy"},
        {"status": "degraded", "cluster": {"nodes": [{"address": "a:1"}, "junk"]}},
        {"status": "healthy", "cluster": "junk", "type": None},
    ],
)
def test_fields_an_older_or_newer_service_lacks_show_as_dashes(health: dict[str, Any]) -> None:
    stats: dict[str, Any] = {"tiers": [{"name": "native-redis", "nodes": [{}]}, 7], "events": [{}]}

    for snapshot in (Snapshot(URL, health), Snapshot(URL, health, token_given=True, stats=stats)):
        assert render(snapshot).startswith("pitchey-cache at")


def test_with_a_refused_token_the_public_view_shows_without_the_token_hint() -> None:
    snapshot = Snapshot(
        URL, {"status": "healthy"}, token_given=True, admin_problem="refused (HTTP 401)"
    )

    assert "admin token" not in render(snapshot)


# -- the requests ------------------------------------------------------------------------------


Handler = Callable[[httpx.Request], httpx.Response]


def service(
    health: dict[str, Any],
    *,
    health_status: int = 200,
    admin_status: int = 200,
    seen: list[httpx.Request] | None = None,
) -> httpx.MockTransport:
    """A mock of the service; admin endpoints answer ``admin_status`` to TOKEN, 401 otherwise."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path.removeprefix("/cache")
        if path == HEALTH_PATH:
            return httpx.Response(health_status, json=health)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"error": "missing or wrong admin token"})
        if admin_status != 200:
            return httpx.Response(admin_status, json={"error": "no"})
        if path == STATS_PATH:
            return httpx.Response(200, json={"status": health["status"], "tiers": []})
        if path == CLUSTER_PATH:
            return httpx.Response(200, json={"enabled": False, "message": "none", "nodes": []})
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def test_the_token_goes_only_to_the_admin_endpoints() -> None:
    seen: list[httpx.Request] = []

    snapshot = fetch(URL, TOKEN, transport=service({"status": "healthy"}, seen=seen))

    assert [r.url.path for r in seen] == [HEALTH_PATH, STATS_PATH, CLUSTER_PATH]
    assert "authorization" not in seen[0].headers
    assert snapshot.stats is not None
    assert snapshot.cluster is not None
    assert snapshot.admin_problem is None


def test_a_url_with_a_path_prefix_is_kept() -> None:
    seen: list[httpx.Request] = []

    fetch(URL + "/cache/", None, transport=service({"status": "healthy"}, seen=seen))

    assert [r.url.path for r in seen] == ["/cache" + HEALTH_PATH]


@pytest.mark.parametrize(
    ("admin_status", "problem"),
    [
        (401, "the admin token was refused (HTTP 401)"),
        (403, "the admin endpoints are disabled there"),
        (500, "answered HTTP 500 without a JSON body"),
    ],
)
def test_an_admin_failure_is_a_problem_not_an_outage(admin_status: int, problem: str) -> None:
    transport = service({"status": "degraded"}, admin_status=admin_status)

    snapshot = fetch(URL, TOKEN, transport=transport)

    assert snapshot.stats is None
    assert snapshot.admin_problem is not None
    assert problem in snapshot.admin_problem
    assert URL + STATS_PATH in snapshot.admin_problem
    assert exit_code(snapshot) == EXIT_DEGRADED


def test_the_503_of_an_unhealthy_cache_is_an_answer() -> None:
    transport = service({"status": "unhealthy"}, health_status=503)

    assert exit_code(fetch(URL, None, transport=transport)) == EXIT_UNHEALTHY


def answering(response: httpx.Response) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _request: response)


def raising(error: Exception) -> httpx.MockTransport:
    def handle(_request: httpx.Request) -> httpx.Response:
        raise error

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        (raising(httpx.ConnectError("[Errno 111] Connection refused")), "cannot connect to"),
        (raising(httpx.ReadTimeout("timed out")), "no answer from"),
        (raising(httpx.RemoteProtocolError("illegal status line")), "no usable answer from"),
        (answering(httpx.Response(404, text="not found")), "answered HTTP 404"),
        (answering(httpx.Response(200, text="<html>")), "without a pitchey-cache health body"),
        (answering(httpx.Response(200, json=["healthy"])), "without a pitchey-cache health body"),
        (answering(httpx.Response(302, headers={"location": "/"})), "answered HTTP 302"),
    ],
    ids=["refused", "timeout", "protocol", "404", "html", "not-an-object", "redirect"],
)
def test_no_usable_health_answer_is_unreachable_naming_the_url(
    transport: httpx.MockTransport, message: str
) -> None:
    with pytest.raises(ServiceUnreachable, match=message) as caught:
        fetch(URL, TOKEN, timeout=2, transport=transport)

    assert URL + HEALTH_PATH in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the command -------------------------------------------------------------------------------


def status_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def run_status(
    *argv: str,
    env: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    return run(status_args(*argv), env or {}, transport=transport)


def recording(answer: Handler) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return seen, httpx.MockTransport(handle)


HEALTHY: Handler = lambda _request: httpx.Response(200, json={"status": "healthy"})  # noqa: E731


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"CACHE_HTTP_HOST": "0.0.0.0", "CACHE_HTTP_PORT": "9000"}, "http://127.0.0.1:9000"),  # noqa: S104
        ({"CACHE_HTTP_HOST": "[::]"}, "http://[::1]:8080"),
        ({"CACHE_HTTP_HOST": "cache.internal"}, "http://cache.internal:8080"),
        # Other variables, even malformed, are not this command's business.
        ({"REDIS_PORT": "abc", "REDIS_CLUSTER_ENABLED": "maybe"}, "http://127.0.0.1:8080"),
    ],
)
def test_the_url_defaults_to_where_serve_listens(env: dict[str, str], url: str) -> None:
    seen, transport = recording(HEALTHY)

    assert run_status(env=env, transport=transport) == EXIT_HEALTHY
    assert str(seen[0].url) == url + HEALTH_PATH


def test_the_token_defaults_to_cache_admin_token_and_is_never_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen, transport = recording(
        lambda r: HEALTHY(r) if r.url.path == HEALTH_PATH else httpx.Response(401, json={})
    )

    code = run_status(env={"CACHE_ADMIN_TOKEN": TOKEN}, transport=transport)

    out, err = capsys.readouterr()
    assert code == EXIT_HEALTHY
    assert seen[1].headers["authorization"] == f"Bearer {TOKEN}"
    assert "the admin token was refused (HTTP 401)" in err
    assert "showing the public health only" in err
    assert TOKEN not in out + err


def test_an_echoed_token_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    transport = answering(httpx.Response(200, json={"status": "healthy", "type": TOKEN}))

    run_status("--token", TOKEN, transport=transport)

    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert "**********" in out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ((), {"CACHE_HTTP_PORT": "abc"}, "CACHE_HTTP_PORT 'abc': expected an integer"),
        ((), {"CACHE_ADMIN_TOKEN": "has space"}, "CACHE_ADMIN_TOKEN: a bearer token"),
        (("--token", "has space"), {}, "--token: a bearer token"),
        (("--url", "ftp://cache.internal"), {}, "--url 'ftp://cache.internal': expected"),
        (
            ("--url", "http://u:pw-xyz@cache.internal"),
            {},
            "--url 'http://cache.internal': must not hold credentials",
        ),
        (("--url", "http://cache.internal/?token=xyz"), {}, "--url: expected no query"),
        (("--timeout", "0"), {}, "--timeout must be a positive number"),
    ],
    ids=["port", "env-token", "token", "scheme", "credentials", "query", "timeout"],
)
def test_a_bad_option_or_variable_is_named_and_exits_2(
    argv: tuple[str, ...], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seen, transport = recording(HEALTHY)

    code = run_status(*argv, env=env, transport=transport)

    err = capsys.readouterr().err
    assert code == EXIT_UNHEALTHY
    assert message in err
    assert err.count("\n") == 1
    assert "pw-xyz" not in err
    assert "xyz" not in err
    assert "has space" not in err
    assert seen == []


def test_unreachable_is_one_line_on_stderr_naming_the_url_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    transport = raising(httpx.ConnectError("[Errno 111] Connection refused"))

    code = run_status("--url", URL, transport=transport)

    out, err = capsys.readouterr()
    assert code == EXIT_UNHEALTHY
    assert out == ""
    assert err == (
        f"pitchey-cache status: cannot connect to {URL}{HEALTH_PATH}: "
        "[Errno 111] Connection refused\n"
    )


def test_the_cli_runs_status_without_reading_the_cache_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A setting `serve` would refuse; `status` reads nothing but where to ask.
    monkeypatch.setenv("REDIS_PORT", "not-a-port")

    code = main(["status", "--url", "ftp://cache.internal"])

    assert code == EXIT_UNHEALTHY
    assert "--url" in capsys.readouterr().err


def test_the_cli_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])

    out = capsys.readouterr().out
    assert "Exit 0 when healthy, 1 when degraded, 2 when unhealthy or unreachable" in " ".join(
        out.split()
    )
    assert "CACHE_ADMIN_TOKEN" in out
