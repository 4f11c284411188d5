"""``/metrics`` of a real ``pitchey-cache serve`` over a real redis-server, killed and restarted.

The metrics listener is the separate one (CACHE_METRICS_PORT) without auth, as on
a private network; the main listener then has no /metrics at all.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pitchey_cache.devtools.local_redis import RedisServer, free_port
from tests.prometheus_text import Samples, samples, value

READY_WITHIN_S = 20.0
# Generous: health checks run every 200 ms, but two cores are shared with everything.
CHANGE_WITHIN_S = 15.0


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=2.0)
    response.raise_for_status()
    return samples(response.text)


def wait_for(url: str, check: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + CHANGE_WITHIN_S
    while True:
        body = scrape(url)
        if check(body):
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"/metrics did not show {what} within {CHANGE_WITHIN_S:g}s")
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    """``serve`` with metrics on their own port, no auth; yields (main URL, metrics URL)."""
    http_port, metrics_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_HOST": redis_server.host,
        "REDIS_PORT": str(redis_server.port),
        "REDIS_COMMAND_TIMEOUT": "200",
        "REDIS_CONNECT_TIMEOUT": "200",
        "REDIS_HEALTH_CHECK_INTERVAL": "200",
        "REDIS_FAILOVER_TIMEOUT": "500",
        "CACHE_HTTP_PORT": str(http_port),
        "CACHE_METRICS_PORT": str(metrics_port),
        "CACHE_METRICS_AUTH": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pitchey_cache", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    main, metrics = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                httpx.get(metrics, timeout=1.0)
                httpx.get(f"{main}/api/health/cache", timeout=1.0)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        yield main, metrics
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)


def test_metrics_follow_a_killed_and_restarted_server(
    served: tuple[str, str], redis_server: RedisServer
) -> None:
    main, metrics = served
    node = {"tier": "native-redis", "node": redis_server.address, "role": "master"}

    healthy = scrape(metrics)
    assert value(healthy, "pitchey_cache_node_healthy", **node) == 1
    assert value(healthy, "pitchey_cache_tier_active", tier="native-redis") == 1
    assert value(healthy, "pitchey_cache_status", status="healthy") == 1
    assert httpx.get(f"{main}/metrics", timeout=2.0).status_code == 404

    redis_server.kill()
    down = wait_for(
        metrics,
        lambda b: value(b, "pitchey_cache_tier_active", tier="in-memory") == 1,
        "in-memory active",
    )
    assert value(down, "pitchey_cache_node_healthy", **node) == 0
    assert (value(down, "pitchey_cache_node_consecutive_failures", **node) or 0) >= 1
    assert value(down, "pitchey_cache_tier_condition", tier="native-redis", condition="down") == 1
    assert value(down, "pitchey_cache_failovers_total") == 1
    assert value(down, "pitchey_cache_events_total", kind="failover") == 1
    assert value(down, "pitchey_cache_status", status="degraded") == 1

    redis_server.restart()
    back = wait_for(
        metrics,
        lambda b: value(b, "pitchey_cache_tier_active", tier="native-redis") == 1,
        "native-redis active again",
    )
    assert value(back, "pitchey_cache_node_healthy", **node) == 1
    assert value(back, "pitchey_cache_failbacks_total") == 1
    assert value(back, "pitchey_cache_status", status="healthy") == 1


def test_a_metrics_port_in_use_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "pitchey_cache", "serve"],
            cwd=tmp_path,
            env={
                "PATH": os.environ["PATH"],
                "REDIS_PORT": str(free_port()),
                "CACHE_HTTP_PORT": str(free_port()),
                "CACHE_METRICS_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert done.returncode == 1
    assert f"pitchey-cache: cannot listen: [Errno 98] 127.0.0.1:{port}: Address already in use" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr + done.stdout
