"""SyncCache: the async Cache driven from threads, across a real fork, on a real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pitchey_cache import CacheError, Settings, SyncCache
from pitchey_cache.devtools.local_redis import RedisServer
from pitchey_cache.sync import loop_thread

pytestmark = pytest.mark.integration


def settings_for(server: RedisServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_host": server.host,
        "redis_port": server.port,
        "key_prefix": "sync",
        "command_timeout_ms": 500,
        "connect_timeout_ms": 500,
        "retry_delay_ms": 50,
        "failover_timeout_ms": 500,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def sync_cache(redis_server: RedisServer) -> Iterator[SyncCache]:
    with SyncCache(settings_for(redis_server)) as cache:
        yield cache


def test_the_api_without_await(sync_cache: SyncCache) -> None:
    assert sync_cache.active_tier == "native-redis"
    assert sync_cache.set("pitch:1", {"title": "Moon"}, ttl=60) is True
    assert sync_cache.get("pitch:1") == {"title": "Moon"}
    assert sync_cache.get("pitch:missing", "dflt") == "dflt"
    assert sync_cache.set("pitch:1", "other", only_if_absent=True) is False
    assert sync_cache.exists("pitch:1") is True
    assert sync_cache.expire("pitch:1", 120) is True
    assert 110 <= sync_cache.ttl("pitch:1") <= 120
    assert sync_cache.incr("views") == 1
    assert sync_cache.incr("views", 9) == 10
    sync_cache.set_many({"a": 1, "b": None, "c": b"\x00raw"})
    assert sync_cache.get_many(["a", "b", "c", "zz"]) == {"a": 1, "b": None, "c": b"\x00raw"}
    assert sync_cache.delete("a", "zz") == 1
    assert sync_cache.delete_pattern("pitch:*") == 1
    assert sync_cache.health()["type"] == "native-redis"
    assert sync_cache.stats()["cache"]["sets"] >= 4
    assert sync_cache.status() == "healthy"
    assert "native-redis" in repr(sync_cache)


def test_starts_on_first_use_and_again_after_close(redis_server: RedisServer) -> None:
    cache = SyncCache(settings_for(redis_server))
    assert "not started" in repr(cache)
    cache.set("k", 1)
    cache.close()
    cache.close()  # harmless twice
    assert cache.get("k") == 1
    cache.close()


def test_threads_share_one_cache_safely(sync_cache: SyncCache) -> None:
    def work() -> None:
        for _ in range(50):
            sync_cache.incr("hits")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sync_cache.get("hits") == 400


def test_get_or_set_runs_the_loader_once_in_the_calling_thread(sync_cache: SyncCache) -> None:
    calls: list[str] = []
    release = threading.Event()

    def loader() -> str:
        calls.append(threading.current_thread().name)
        release.wait(5)
        return "loaded"

    results: list[object] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(sync_cache.get_or_set("slow", loader, 60)),
            name=f"caller-{i}",
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join()
    assert results == ["loaded"] * 4
    assert len(calls) == 1
    assert calls[0].startswith("caller-")
    assert sync_cache.get_or_set("slow", loader) == "loaded"
    assert len(calls) == 1


def test_a_loader_error_reaches_the_caller(sync_cache: SyncCache) -> None:
    def loader() -> str:
        raise LookupError("no such pitch")

    with pytest.raises(LookupError, match="no such pitch"):
        sync_cache.get_or_set("broken", loader)
    assert sync_cache.exists("broken") is False


def test_a_call_from_the_loop_thread_raises_instead_of_deadlocking(
    sync_cache: SyncCache,
) -> None:
    async def inside_the_loop() -> None:
        sync_cache.get("k")

    future = loop_thread().submit(inside_the_loop())
    with pytest.raises(CacheError, match="own event loop thread"):
        future.result(5)
    assert sync_cache.get("k") is None  # the loop still serves


async def test_awaitable_twins_do_not_block_the_callers_loop(
    sync_cache: SyncCache, redis_server: RedisServer
) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    assert await sync_cache.aset("async", [1, 2]) is True
    assert await sync_cache.aget("async") == [1, 2]
    assert await sync_cache.aget_many(["async"]) == {"async": [1, 2]}
    assert await sync_cache.aincr("n", 2) == 2
    assert await sync_cache.adelete("async", "n") == 2
    assert (await sync_cache.ahealth())["status"] == "healthy"
    # A frozen Redis holds the call for its command timeout (0.5 s); meanwhile
    # this loop keeps running its other tasks.
    task = asyncio.create_task(ticker())
    redis_server.pause()
    try:
        started = time.monotonic()
        assert await sync_cache.aget("async", "fallback") == "fallback"
        waited = time.monotonic() - started
    finally:
        redis_server.resume()
        task.cancel()
    assert waited >= 0.4
    assert ticks >= 10


def test_a_forked_child_starts_its_own_loop_and_leaves_the_parents_alone(
    sync_cache: SyncCache,
) -> None:
    sync_cache.set("from-parent", "p")
    parent_loop = loop_thread()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = b"ok"
        try:
            child_loop = loop_thread()
            assert child_loop is not parent_loop
            assert child_loop.loop is not parent_loop.loop
            assert sync_cache.get("from-parent") == "p"
            sync_cache.set("from-child", os.getpid())
            assert sync_cache.incr("both") == 1
            sync_cache.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            status = repr(exc).encode()
        os.write(write_end, status)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read()
    _, code = os.waitpid(pid, 0)
    assert report == b"ok"
    assert os.waitstatus_to_exitcode(code) == 0
    # The parent's loop, clients and connections survived the child's close and exit.
    assert loop_thread() is parent_loop
    assert sync_cache.get("from-child") == pid
    assert sync_cache.incr("both") == 2
    assert sync_cache.active_tier == "native-redis"


@pytest.mark.parametrize("frozen", [False, True], ids=["server-up", "server-frozen"])
def test_exit_closes_within_a_bound(redis_server: RedisServer, frozen: bool) -> None:
    # The child freezes the server itself (SIGSTOP) after its last call, so its exit
    # meets clients whose server no longer answers.
    script = (
        "import os, signal\n"
        "from pitchey_cache import SyncCache, Settings\n"
        f"c = SyncCache(Settings(redis_host='{redis_server.host}', redis_port={redis_server.port}))\n"
        "c.set('exit', 1)\n"
        "print(c.get('exit'))\n"
        f"if {frozen}: os.kill({redis_server.pid}, signal.SIGSTOP)\n"
    )
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        redis_server.resume()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    # Start-up, two calls, and at most EXIT_CLOSE_TIMEOUT (5 s) to close; loose for load.
    assert time.monotonic() - started < 20


def test_a_blocked_loop_meets_the_call_deadline(redis_server: RedisServer) -> None:
    cache = SyncCache(settings_for(redis_server), call_timeout=0.3)
    cache.set("k", 1)

    async def block_the_loop() -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - the point: foreign code blocking the loop

    blocker = loop_thread().submit(block_the_loop())
    with pytest.raises(CacheError, match=r"get\(\) did not finish within 0.3 s"):
        cache.get("k")
    blocker.result(5)
    assert cache.get("k") == 1
    cache.close()
