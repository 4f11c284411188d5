"""``SyncCache`` and the Django backend beside the async ``Cache`` and django-redis.

All on one redis-server, same 100-byte value, same run, cases interleaved:

- the async ``Cache`` from 1 and 8 asyncio tasks (what the sync facade wraps);
- ``SyncCache`` from 1 and 8 threads (every call hops to the cache's loop thread
  and back);
- the Django backend (``pitchey_cache.contrib.django.PitcheyCache``) and
  django-redis (redis-py with its connection pool, pickling values), the backend a
  Django site would otherwise use, from 1 and 8 threads;
- the hop alone: a no-op coroutine handed to the loop thread and waited for.

The sync overhead per call is SyncCache's time per call from one thread minus the
async Cache's from one task; the hop row measures the same cost with no Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import glide

from benchmarks._harness import Case, Ratio, Sample, Timing, concurrent_rate, run_interleaved, table
from benchmarks.single import KEY_COUNT, VALUE, VALUE_BYTES, raw_configuration, redis_version
from pitchey_cache import Cache, Settings, SyncCache
from pitchey_cache.devtools.local_redis import RedisServer
from pitchey_cache.sync import loop_thread

THREADS = 8
OPS = ("get", "set")
ASYNC_1 = "Cache (async), 1 task"
ASYNC_N = f"Cache (async), {THREADS} tasks"
SYNC_1 = "SyncCache, 1 thread"
SYNC_N = f"SyncCache, {THREADS} threads"
DJANGO_1 = "Django PitcheyCache, 1 thread"
DJANGO_N = f"Django PitcheyCache, {THREADS} threads"
DJANGO_REDIS_1 = "django-redis, 1 thread"
DJANGO_REDIS_N = f"django-redis, {THREADS} threads"
CLIENTS = (ASYNC_1, SYNC_1, DJANGO_1, DJANGO_REDIS_1, ASYNC_N, SYNC_N, DJANGO_N, DJANGO_REDIS_N)
HOP = "loop hop only: no-op coroutine, 1 thread"


def thread_rate(op: Callable[[int], object], *, threads: int, timing: Timing) -> Sample:
    """Throughput of ``threads`` threads, each calling ``op`` back to back.

    Both CPU figures are the whole process's (the threads and the cache's loop
    thread share the work); the count is sampled while every thread is busy.
    """
    counts = [0] * threads
    running = True
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        i = n
        try:
            while running:
                op(i)
                counts[n] += 1
                i += threads
        except BaseException as exc:  # noqa: BLE001 - re-raised by the measuring thread
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    try:
        time.sleep(timing.warmup)
        first = (sum(counts), time.perf_counter(), time.process_time())
        time.sleep(timing.duration)
        last = (sum(counts), time.perf_counter(), time.process_time())
    finally:
        running = False
        for w in workers:
            w.join()
    if errors:
        raise errors[0]
    ops = last[0] - first[0]
    cpu_us = (last[2] - first[2]) * 1e6 / ops
    return Sample(ops_per_s=ops / (last[1] - first[1]), loop_cpu_us_per_op=cpu_us,
                  process_cpu_us_per_op=cpu_us)  # fmt: skip


def _threads(
    op: Callable[[int], object], n: int, timing: Timing
) -> Callable[[], Awaitable[Sample]]:
    async def measure() -> Sample:
        return await asyncio.to_thread(thread_rate, op, threads=n, timing=timing)

    return measure


def _tasks(
    op: Callable[[int], Awaitable[object]], n: int, timing: Timing
) -> Callable[[], Awaitable[Sample]]:
    async def measure() -> Sample:
        return await concurrent_rate(op, tasks=n, timing=timing)

    return measure


@dataclass(slots=True)
class SyncReport:
    cases: dict[tuple[str, str], Case]
    hop: Case
    redis_version: str
    timing: Timing

    def us_per_call(self, client: str, op: str) -> float:
        return 1e6 / self.cases[client, op].best

    def overhead_us(self, op: str) -> float:
        """SyncCache's time per call from one thread minus the async Cache's from one task."""
        return self.us_per_call(SYNC_1, op) - self.us_per_call(ASYNC_1, op)

    def ratios(self) -> dict[str, Ratio]:
        out: dict[str, Ratio] = {}
        for op in OPS:
            c = self.cases
            out[f"{op.upper()}: SyncCache 1 thread / Cache 1 task"] = Ratio(
                c[SYNC_1, op], c[ASYNC_1, op]
            )
            out[f"{op.upper()}: SyncCache {THREADS} threads / Cache {THREADS} tasks"] = Ratio(
                c[SYNC_N, op], c[ASYNC_N, op]
            )
            out[f"{op.upper()}: Django PitcheyCache / django-redis, 1 thread"] = Ratio(
                c[DJANGO_1, op], c[DJANGO_REDIS_1, op]
            )
            out[f"{op.upper()}: Django PitcheyCache / django-redis, {THREADS} threads"] = Ratio(
                c[DJANGO_N, op], c[DJANGO_REDIS_N, op]
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "server": f"redis-server {self.redis_version}, loopback, one process",
            "threads": THREADS,
            "value_bytes": VALUE_BYTES,
            "warmup_s": self.timing.warmup,
            "duration_s": self.timing.duration,
            "rounds": self.timing.rounds,
            "cases": [
                {**case.as_json(), "us_per_op": round(1e6 / case.best, 2)}
                for case in [*self.cases.values(), self.hop]
            ],
            "sync_overhead_us_per_call": {op: round(self.overhead_us(op), 1) for op in OPS},
            "loop_hop_us": round(1e6 / self.hop.best, 1),
            "ratios": {name: r.as_json() for name, r in self.ratios().items()},
        }

    def render(self) -> str:
        rows = [
            [
                client,
                op.upper(),
                f"{self.cases[client, op].best:,.0f}",
                f"{self.us_per_call(client, op):.1f}",
                f"{self.cases[client, op].process_cpu_us:.1f}",
            ]
            for op in OPS
            for client in CLIENTS
        ]
        rows.append([HOP, "-", f"{self.hop.best:,.0f}", f"{1e6 / self.hop.best:.1f}",
                     f"{self.hop.process_cpu_us:.1f}"])  # fmt: skip
        t = self.timing
        title = (
            f"sync API: redis-server {self.redis_version} on loopback, {VALUE_BYTES}-byte "
            f"values; ops/s: best of {t.rounds} x {t.duration:g} s (after {t.warmup:g} s "
            "warm-up); CPU: whole process, median over rounds"
        )
        overhead = ", ".join(f"{op.upper()} {self.overhead_us(op):+.1f} us" for op in OPS)
        note = (
            f"sync overhead per call (SyncCache 1 thread - Cache 1 task): {overhead}; "
            f"the hop alone: {1e6 / self.hop.best:.1f} us"
        )
        header = ["client", "op", "ops/s", "us/op", "process CPU us/op"]
        return "\n".join([title, "", table(header, rows), "", note])


def _django_caches(server: RedisServer) -> tuple[Any, Any]:
    """Django's cache handler with our backend and django-redis on ``server``."""
    import django  # noqa: PLC0415 - Django is a dev extra, needed here only
    from django.conf import settings  # noqa: PLC0415

    if not settings.configured:
        settings.configure(
            CACHES={
                "pitchey": {
                    "BACKEND": "pitchey_cache.contrib.django.PitcheyCache",
                    "OPTIONS": {"REDIS_HOST": server.host, "REDIS_PORT": server.port},
                },
                "django_redis": {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": f"redis://{server.host}:{server.port}/0",
                },
            }
        )
        django.setup()
    from django.core.cache import caches  # noqa: PLC0415

    return caches, settings


async def run(server: RedisServer, timing: Timing, progress: Callable[[str], None]) -> SyncReport:
    settings = Settings(redis_host=server.host, redis_port=server.port)
    keys = [f"bench:{n}" for n in range(KEY_COUNT)]
    caches, _ = _django_caches(server)
    sync = SyncCache(settings)
    hop_loop = loop_thread()

    async def nothing() -> None:
        return None

    def hop(_: int) -> object:
        return hop_loop.submit(nothing()).result()

    async with Cache(settings) as cache:

        async def async_get(i: int) -> object:
            return await cache.get(keys[i % KEY_COUNT])

        async def async_set(i: int) -> object:
            return await cache.set(keys[i % KEY_COUNT], VALUE)

        def sync_get(i: int) -> object:
            return sync.get(keys[i % KEY_COUNT])

        def sync_set(i: int) -> object:
            return sync.set(keys[i % KEY_COUNT], VALUE)

        # Django makes a backend object per thread; each thread looks its own up.
        def django_get(alias: str) -> Callable[[int], object]:
            return lambda i: caches[alias].get(keys[i % KEY_COUNT])

        def django_set(alias: str) -> Callable[[int], object]:
            return lambda i: caches[alias].set(keys[i % KEY_COUNT], VALUE)

        await cache.set_many(dict.fromkeys(keys, VALUE))
        await asyncio.to_thread(caches["pitchey"].set_many, dict.fromkeys(keys, VALUE))
        await asyncio.to_thread(caches["django_redis"].set_many, dict.fromkeys(keys, VALUE))
        assert await asyncio.to_thread(sync_get, 0) == VALUE
        assert await asyncio.to_thread(django_get("pitchey"), 0) == VALUE
        assert await asyncio.to_thread(django_get("django_redis"), 0) == VALUE
        raw = await glide.GlideClient.create(raw_configuration(server))
        try:
            version = await redis_version(raw)
        finally:
            await raw.close()

        ops: dict[str, dict[str, Callable[[int], Any]]] = {
            "get": {"async": async_get, "sync": sync_get},
            "set": {"async": async_set, "sync": sync_set},
        }
        cases: dict[tuple[str, str], Case] = {}
        for op, fns in ops.items():
            pick = django_get if op == "get" else django_set
            cases[ASYNC_1, op] = Case(f"{ASYNC_1} {op}", _tasks(fns["async"], 1, timing))
            cases[ASYNC_N, op] = Case(f"{ASYNC_N} {op}", _tasks(fns["async"], THREADS, timing))
            cases[SYNC_1, op] = Case(f"{SYNC_1} {op}", _threads(fns["sync"], 1, timing))
            cases[SYNC_N, op] = Case(f"{SYNC_N} {op}", _threads(fns["sync"], THREADS, timing))
            cases[DJANGO_1, op] = Case(f"{DJANGO_1} {op}", _threads(pick("pitchey"), 1, timing))
            cases[DJANGO_N, op] = Case(
                f"{DJANGO_N} {op}", _threads(pick("pitchey"), THREADS, timing)
            )
            cases[DJANGO_REDIS_1, op] = Case(
                f"{DJANGO_REDIS_1} {op}", _threads(pick("django_redis"), 1, timing)
            )
            cases[DJANGO_REDIS_N, op] = Case(
                f"{DJANGO_REDIS_N} {op}", _threads(pick("django_redis"), THREADS, timing)
            )
        hop_case = Case(HOP, _threads(hop, 1, timing))
        everything = [*cases.values(), hop_case]
        progress(f"sync API: {len(everything)} cases x {timing.rounds} rounds")
        await run_interleaved(everything, rounds=timing.rounds, progress=progress)
    await asyncio.to_thread(sync.close)
    return SyncReport(cases=cases, hop=hop_case, redis_version=version, timing=timing)
