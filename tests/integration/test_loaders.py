"""get_or_set against a real redis-server, from several OS processes: one loader call per
TTL period, a dead lock holder taken over, stale values on loader errors, tags across
an outage, and a Redis killed mid-run that never raises into a caller."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pitchey_cache import Cache, Settings
from pitchey_cache.devtools.local_redis import RedisServer
from tests.integration.conftest import RedisServerFactory

ROOT = Path(__file__).resolve().parents[2]
# Generous: the machine may be busy, and these tests check behaviour, not speed.
PATIENT: dict[str, Any] = {"command_timeout_ms": 2000, "connect_timeout_ms": 2000}


def worker(config: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own module, with our own arguments
        [sys.executable, "-m", "tests.integration.loader_worker", orjson.dumps(config).decode()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def reports(processes: list[subprocess.Popen[bytes]], timeout: float) -> list[dict[str, Any]]:
    out = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]
        out.append(orjson.loads(stdout.splitlines()[-1]))
    return out


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test started; any still running at the end are killed by PID."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]


def hot_key_config(server: RedisServer, **overrides: Any) -> dict[str, Any]:
    return {
        "port": server.port,
        "start_at": time.time() + 3.0,  # every process connected and waiting by then
        "duration": 8.0,
        "tasks": 40,
        "ttl": 2,
        "loader_seconds": 0.2,
        "options": {"lock": True, "early_refresh": True},
        **overrides,
    }


async def test_three_processes_make_one_loader_call_per_ttl_and_never_wait_after_warm_up(
    redis_server: RedisServer, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    config = hot_key_config(redis_server)
    stop_later += [worker(config) for _ in range(3)]
    results = await asyncio.to_thread(reports, stop_later, 60)

    loads = sorted(t for r in results for t in r["loads"])
    errors = [e for r in results for e in r["errors"]]
    assert errors == []
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(loads)]
    # 8 s hold 4 TTL periods of 2 s; the first load starts the first. A refresh starts
    # 2 loader times (0.4 s) before expiry, so loads come every ~1.8 s.
    assert 1 <= len(loads) <= math.ceil(config["duration"] / config["ttl"]) + 1, gaps
    # After the first value is stored, no caller misses (waits for the loader): the
    # value is refreshed before it expires.
    warm = loads[0] + 1.0
    for r in results:
        at_warm = max((m for at, m in r["misses"] if at <= warm), default=0)
        assert r["misses"][-1][1] == at_warm, f"misses after warm-up: {r['misses']}"
    late = [lat for r in results for (at, lat) in r["latencies"] if at - lat > warm]
    assert late, "no calls after warm-up"
    assert p99(late) < config["loader_seconds"], f"p99 {p99(late):.4f}s max {max(late):.4f}s"


async def test_a_killed_lock_holder_is_taken_over_within_the_lock_ttl(
    redis_server: RedisServer, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    lock_ttl = 2.0
    holder = worker({"mode": "holder", "port": redis_server.port, "lock_ttl": lock_ttl})
    stop_later.append(holder)
    assert holder.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
    assert line.strip() == b"loading"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)

    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        return "taken over"

    settings = Settings(
        redis_host=redis_server.host, redis_port=redis_server.port, key_prefix="loaders", **PATIENT
    )
    async with Cache(settings) as cache:
        started = time.monotonic()
        value = await cache.get_or_set("hot", loader, 60, lock=True, lock_ttl=lock_ttl)
        waited = time.monotonic() - started
        assert value == "taken over"
        assert calls == 1
        assert cache.counters.lock_waits >= 1
        # The dead holder's lock had at most lock_ttl left; polls are 200 ms apart.
        assert waited <= lock_ttl + 1.0
        assert not await cache.exists("__lock__:hot")


async def test_stale_if_error_serves_the_old_value_then_stops_after_n_seconds(
    redis_server: RedisServer,
) -> None:
    settings = Settings(
        redis_host=redis_server.host, redis_port=redis_server.port, key_prefix="s", **PATIENT
    )
    failing = False

    async def loader() -> str:
        if failing:
            raise RuntimeError("database down")
        return "fresh"

    async with Cache(settings) as cache:
        assert await cache.get_or_set("k", loader, 1, stale_if_error=2) == "fresh"
        failing = True
        await asyncio.sleep(1.2)
        assert await cache.get("k") is None  # expired for readers...
        assert await cache.get_or_set("k", loader, 1, stale_if_error=2) == "fresh"  # ...stale
        assert cache.counters.stale_served == 1
        await asyncio.sleep(2.0)
        with pytest.raises(RuntimeError, match="database down"):
            await cache.get_or_set("k", loader, 1, stale_if_error=2)


async def test_a_tag_invalidated_during_an_outage_stays_invalid_after_failback(
    redis_server_factory: RedisServerFactory,
) -> None:
    # Persistent, so the restarted server still holds the entry and the tag's old token.
    server = redis_server_factory(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    settings = Settings(
        redis_host=server.host,
        redis_port=server.port,
        key_prefix="tags",
        command_timeout_ms=500,
        connect_timeout_ms=500,
        failover_timeout_ms=300,
        health_check_interval_ms=200,
        max_failures=1,
        max_retries=0,
    )
    async with Cache(settings) as cache:
        await cache.set("browse:1", [1, 2], 60, tags=["browse"])
        await cache.set("pitch:1", {"t": 1}, 60, tags=["pitch"])
        server.kill()
        await cache.invalidate_tags("browse")  # fails on Redis, served by memory, journaled
        assert cache.active_tier == "in-memory"
        server.start()
        for _ in range(100):
            if cache.active_tier == "native-redis":
                break
            await asyncio.sleep(0.1)
        assert cache.active_tier == "native-redis"
        # Redis still holds the entry and the tag's old token; the entry is not served.
        assert await cache.exists("browse:1")
        assert await cache.get("browse:1") is None
        assert await cache.get("pitch:1") == {"t": 1}


async def test_redis_killed_mid_run_degrades_and_never_raises(
    redis_server: RedisServer, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    config = hot_key_config(
        redis_server,
        duration=5.0,
        tasks=20,
        command_timeout_ms=500,
        failover_timeout_ms=500,
        options={"lock": True, "early_refresh": True, "stale_if_error": 5},
    )
    stop_later += [worker(config) for _ in range(2)]
    await asyncio.sleep(config["start_at"] - time.time() + 2.0)
    redis_server.kill()
    results = await asyncio.to_thread(reports, stop_later, 60)

    assert [e for r in results for e in r["errors"]] == []
    assert all(r["active_tier"] == "in-memory" for r in results)
    # Each process loads again once Redis is gone (its memory tier holds nothing),
    # then serves from memory: a handful of loads per process, not one per call.
    calls = sum(len(r["latencies"]) for r in results)
    loads = sum(len(r["loads"]) for r in results)
    assert loads <= 2 * (config["duration"] / config["ttl"] + 3), loads
    assert calls > 10 * loads


async def test_the_decorator_on_redis_keys_by_template_and_invalidates(
    redis_server: RedisServer,
) -> None:
    settings = Settings(
        redis_host=redis_server.host, redis_port=redis_server.port, key_prefix="d", **PATIENT
    )
    async with Cache(settings) as cache:
        calls: list[int] = []

        @cache.cached(ttl=60, key="pitch:{pitch_id}", lock=True, tags=["pitches"])
        async def load_pitch(pitch_id: int) -> dict[str, int]:
            calls.append(pitch_id)
            await asyncio.sleep(0.05)
            return {"id": pitch_id}

        results = await asyncio.gather(*(load_pitch(7) for _ in range(10)))
        assert results == [{"id": 7}] * 10
        assert calls == [7]
        assert await cache.get("pitch:7") == {"id": 7}
        assert await load_pitch.invalidate(7) is True
        await load_pitch(7)
        await cache.invalidate_tags("pitches")
        await load_pitch(7)
        assert calls == [7, 7, 7]
