"""``pitchey_cache.testing``, as a user's test suite meets it: the pytest plugin's
fixtures, the context managers, and each fault they inject, against real servers."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pitchey_cache import Cache
from pitchey_cache.testing import (
    FAILOVER_TIMINGS,
    LocalRedisCluster,
    LocalUpstash,
    local_redis,
    wait_for_tier,
)

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_TEST = "def test_pitch_titles_survive_a_redis_outage"
# One failed attempt, a retry delay, and slack for a loaded machine.
CALL_BOUND_S = FAILOVER_TIMINGS["command_timeout_ms"] / 1000 + 1.5


def readme_example() -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (example,) = [block for block in blocks if EXAMPLE_TEST in block]
    return example


def test_the_readme_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    # A fresh directory with no configuration: the fixture comes from the installed
    # plugin's entry point, as in a user's project. pytest-asyncio (this project's, not
    # the example's) is left out: unconfigured, it warns, and warnings are errors here.
    (tmp_path / "test_titles.py").write_text(readme_example())

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


async def timed_get(cache: Cache, key: str) -> tuple[object, float]:
    started = time.monotonic()
    value = await cache.get(key)
    return value, time.monotonic() - started


async def test_a_frozen_redis_costs_a_bounded_call_and_is_used_again_once_thawed() -> None:
    with local_redis() as redis:
        async with redis.cache() as cache:
            await cache.set("k", "before")

            with redis.frozen():
                value, took = await timed_get(cache, "k")
                # Served by the in-memory tier, which never saw the write: a miss,
                # not an exception, and not a wait for the frozen server.
                assert value is None
                assert took < CALL_BOUND_S
                await wait_for_tier(cache, "in-memory")

            await wait_for_tier(cache, "native-redis")
            assert await cache.get("k") == "before"


def test_settings_and_environ_reach_the_server(tmp_path: Path) -> None:
    with local_redis(workdir=tmp_path, password="s3cret pass") as redis:
        settings = redis.settings(command_timeout_ms=900)

        assert settings.tier_chain() == ("native-redis", "in-memory")
        assert (settings.redis_host, settings.redis_port) == (redis.host, redis.port)
        assert settings.command_timeout_ms == 900
        assert settings.max_failures == FAILOVER_TIMINGS["max_failures"]
        assert redis.environ()["REDIS_PORT"] == str(redis.port)
        assert redis.environ()["REDIS_PASSWORD"] == "s3cret pass"
        assert "s3cret" not in repr(redis) + repr(settings)


async def test_upstash_answering_500_or_hanging_is_served_by_the_next_tier(
    pitchey_upstash: LocalUpstash,
) -> None:
    async with pitchey_upstash.cache() as cache:
        await cache.set("k", 1)
        assert cache.active_tier == "upstash-redis"

        pitchey_upstash.fail()
        assert await cache.get("k") is None
        assert 500 in {exchange.status for exchange in pitchey_upstash.requests()}
        await wait_for_tier(cache, "in-memory")
        pitchey_upstash.heal()
        await wait_for_tier(cache, "upstash-redis")
        assert await cache.get("k") == 1

        with pitchey_upstash.hanging():
            value, took = await timed_get(cache, "k")
        assert value is None
        assert took < CALL_BOUND_S


def test_upstash_stopped_refuses_connections_and_started_serves_again(
    pitchey_upstash: LocalUpstash,
) -> None:
    pitchey_upstash.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(pitchey_upstash.url, timeout=2)

    pitchey_upstash.start()
    answer = httpx.post(
        pitchey_upstash.url,
        json=["PING"],
        headers={"Authorization": f"Bearer {pitchey_upstash.token}"},
        timeout=5,
    )
    assert answer.json() == {"result": "PONG"}


async def test_a_killed_cluster_master_fails_over_and_rejoins_when_restarted(
    pitchey_cluster: LocalRedisCluster,
) -> None:
    async with pitchey_cluster.cache() as cache:
        await cache.set("pitch:1", "kept")
        victim = pitchey_cluster.master_of("pitch:1")
        assert victim in pitchey_cluster.masters()

        with pitchey_cluster.down(victim):
            # A replica takes the slots over after the node timeout; the cache keeps
            # answering meanwhile (from memory, or the cluster for other shards).
            deadline = time.monotonic() + 30
            while victim in pitchey_cluster.masters() or not _owned(pitchey_cluster, "pitch:1"):
                assert time.monotonic() < deadline, "no replica took the slots over"
                await cache.get("pitch:1")
                await asyncio.sleep(0.1)
            heir = pitchey_cluster.master_of("pitch:1")
            assert heir != victim

        pitchey_cluster.wait_ok()
        assert victim not in pitchey_cluster.masters()  # back as a replica of the heir
        await wait_for_tier(cache, "redis-cluster", within=30)


def _owned(cluster: LocalRedisCluster, key: str) -> bool:
    try:
        cluster.master_of(key)
    except AssertionError:
        return False
    return True
