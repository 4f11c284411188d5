"""The read path: coalescing (CACHE_COALESCE) and the near cache (CACHE_NEAR_CACHE) vs raw drivers.

Run on one redis-server and on a local Redis Cluster (3 masters, 3 replicas),
in the same run. The workload is issue 11's: 10,000 keys of which half are
present (100-byte values), read in a spread order so that half the reads miss.

- 64 tasks each calling GET back to back: raw valkey-glide (one client),
  redis-py asyncio with hiredis (``Redis`` / ``RedisCluster``), and ``Cache``
  with coalescing on and off. Target: coalescing on >= 3x raw glide. Beside
  them, a bare coalescer over the raw client (:class:`BareCoalescer`: one MGET
  in flight, nothing else): the ceiling of any coalescing wrapper of glide here.
- One task calling GET back to back (a lone caller, which coalescing must not
  slow): raw glide and ``Cache``. Target: >= 0.95x raw glide. The latency of
  single calls (p50/p99) is measured on the side, the two clients in turns.
- 64 tasks reading a hot set of 1,000 present keys: raw glide and ``Cache``
  with the near cache on. Target: >= 10x raw glide. A near-cache hit never
  waits for I/O, so each task of that case yields to the loop after every
  call (as the in-memory benchmark does); the raw client waits anyway.
- The invalidation lag: raw glide SETs a key the near cache holds, and the
  time from the acknowledged SET until ``Cache.get`` returns the new value
  (polling, yielding between polls) is recorded, p50/p99 over LAG_WRITES.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import glide
import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from benchmarks._harness import (
    Case,
    Operation,
    Ratio,
    Sample,
    Timing,
    concurrent_rate,
    run_interleaved,
    table,
)
from benchmarks.single import VALUE, check_served_by, redis_version
from pitchey_cache import Cache, NodeAddress, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster
from pitchey_cache.devtools.local_redis import RedisServer

CONCURRENCY = 64
KEY_COUNT = 10_000
# Reads walk the keys in this stride (prime to KEY_COUNT), so consecutive
# reads hit unrelated keys, and slots, and alternate present and missing keys.
STRIDE = 7919
TARGET_COALESCED = 3.0
TARGET_LONE = 0.95
LATENCY_CALLS = 2000
LATENCY_ROUNDS = 3
PREPOPULATE_CHUNK = 1000
HOT_KEYS = 1000
TARGET_NEAR = 10.0
LAG_WRITES = 200
LAG_GIVE_UP_S = 5.0

RAW = "raw glide, 1 client"
REDIS_PY = "redis-py asyncio (hiredis)"
ON = "Cache, coalescing on"
OFF = "Cache, coalescing off"
NEAR = "Cache, near cache on"
BARE = "bare coalescer over raw glide"
MANY = f"GET x {CONCURRENCY} tasks"
LONE = "GET x 1 task"
HOT = f"hot set GET x {CONCURRENCY} tasks"

RedisPy = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class Topology:
    """Where the section runs: its servers, as each client is pointed at them."""

    name: str
    settings: Settings
    connect_raw: Callable[[], Awaitable[glide.GlideClient | glide.GlideClusterClient]]
    connect_redis_py: Callable[[], Awaitable[RedisPy]]

    @classmethod
    def single(cls, server: RedisServer) -> Topology:
        timeout_ms = Settings().command_timeout_ms

        async def raw() -> glide.GlideClient:
            return await glide.GlideClient.create(
                glide.GlideClientConfiguration(
                    [glide.NodeAddress(server.host, server.port)], request_timeout=timeout_ms
                )
            )

        async def redis_py() -> Redis:
            timeout = timeout_ms / 1000
            return Redis(
                host=server.host,
                port=server.port,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )

        return cls(
            name="native-redis",
            settings=Settings(redis_host=server.host, redis_port=server.port),
            connect_raw=raw,
            connect_redis_py=redis_py,
        )

    @classmethod
    def cluster(cls, cluster: LocalCluster) -> Topology:
        timeout_ms = Settings().command_timeout_ms

        async def raw() -> glide.GlideClusterClient:
            return await glide.GlideClusterClient.create(
                glide.GlideClusterClientConfiguration(
                    [glide.NodeAddress(cluster.host, port) for port in cluster.ports],
                    request_timeout=timeout_ms,
                )
            )

        async def redis_py() -> RedisCluster:
            timeout = timeout_ms / 1000
            client = RedisCluster(
                startup_nodes=[ClusterNode(cluster.host, port) for port in cluster.ports],
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            await client.initialize()
            return client

        return cls(
            name="redis-cluster",
            settings=Settings(
                cluster_enabled=True,
                cluster_nodes=tuple(NodeAddress(cluster.host, port) for port in cluster.ports),
            ),
            connect_raw=raw,
            connect_redis_py=redis_py,
        )


@dataclass(frozen=True, slots=True)
class Latency:
    """Single-call latencies of one client, in microseconds, over every latency round."""

    samples: list[float]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": len(self.samples),
            "p50_us": round(self.percentile(50), 1),
            "p99_us": round(self.percentile(99), 1),
            "mean_us": round(statistics.fmean(self.samples), 1),
        }


@dataclass(slots=True)
class CoalescingReport:
    topology: str
    redis_version: str
    timing: Timing
    cases: dict[tuple[str, str], Case]  # (client, workload) -> case
    latency: dict[str, Latency]
    lag_ms: list[float]
    coalescing: dict[str, Any] = field(default_factory=dict)
    near: dict[str, Any] = field(default_factory=dict)

    def targets(self) -> dict[str, Ratio]:
        return {
            f"{MANY}: Cache coalescing on / raw glide": Ratio(
                self.cases[ON, MANY], self.cases[RAW, MANY], TARGET_COALESCED
            ),
            f"{LONE}: Cache / raw glide": Ratio(
                self.cases[ON, LONE], self.cases[RAW, LONE], TARGET_LONE
            ),
            f"{HOT}: Cache near cache on / raw glide": Ratio(
                self.cases[NEAR, HOT], self.cases[RAW, HOT], TARGET_NEAR
            ),
        }

    def evidence(self) -> dict[str, Ratio]:
        return {
            f"{MANY}: Cache coalescing off / raw glide": Ratio(
                self.cases[OFF, MANY], self.cases[RAW, MANY]
            ),
            f"{MANY}: Cache coalescing on / redis-py": Ratio(
                self.cases[ON, MANY], self.cases[REDIS_PY, MANY]
            ),
            f"{MANY}: bare coalescer / raw glide": Ratio(
                self.cases[BARE, MANY], self.cases[RAW, MANY]
            ),
            f"{MANY}: Cache coalescing on / bare coalescer": Ratio(
                self.cases[ON, MANY], self.cases[BARE, MANY]
            ),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "redis_version": self.redis_version,
            "keys": KEY_COUNT,
            "present_keys": KEY_COUNT // 2,
            "value_bytes": len(VALUE) + 2,
            "concurrency": CONCURRENCY,
            "warmup_s": self.timing.warmup,
            "duration_s": self.timing.duration,
            "rounds": self.timing.rounds,
            "cases": [case.as_json() for case in self.cases.values()],
            "latency_1_task": {client: lat.as_json() for client, lat in self.latency.items()},
            "cache_coalescing_stats": self.coalescing,
            "hot_keys": HOT_KEYS,
            "invalidation_lag_ms": _lag_json(self.lag_ms),
            "cache_near_stats": self.near,
            "ratios": {
                name: r.as_json() for name, r in {**self.targets(), **self.evidence()}.items()
            },
        }

    def render(self) -> str:
        rows = []
        for (client, workload), case in self.cases.items():
            raw = self.cases[RAW, workload].best
            rows.append(
                [
                    client,
                    workload,
                    f"{case.best:,.0f}",
                    f"{case.best / raw:.2f}x",
                    f"{case.loop_cpu_us:.1f}",
                    f"{case.process_cpu_us:.1f}",
                ]
            )
        t = self.timing
        title = (
            f"coalescing on {self.topology} (redis-server {self.redis_version}, loopback): "
            f"{KEY_COUNT:,} keys, half missing, {len(VALUE) + 2}-byte values;\n"
            f"ops/s: best of {t.rounds} x {t.duration:g} s (after {t.warmup:g} s warm-up); "
            "CPU: median over rounds, per call"
        )
        header = ["client", "workload", "ops/s", "vs raw glide", "loop CPU us", "process CPU us"]
        latency_rows = [
            [
                client,
                f"{lat.percentile(50):.0f}",
                f"{lat.percentile(99):.0f}",
                f"{len(lat.samples):,}",
            ]
            for client, lat in self.latency.items()
        ]
        lag = _lag_json(self.lag_ms)
        stats = self.coalescing
        average = stats["batchedKeys"] / stats["batches"] if stats.get("batches") else 0.0
        return "\n".join(
            [
                title,
                "",
                table(header, rows),
                "",
                f"1-task latency, single calls in turns ({LATENCY_ROUNDS} rounds):",
                table(["client", "p50 us", "p99 us", "calls"], latency_rows),
                "",
                (
                    f"Cache (coalescing on): {stats.get('batches', 0):,} batches of "
                    f"{average:.1f} keys on average, {stats.get('direct', 0):,} reads sent alone."
                ),
                (
                    f"Near cache: invalidation lag (acknowledged SET by another client -> "
                    f"Cache.get returns it) p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, "
                    f"max {lag['max']:.2f} ms over {lag['writes']} writes; "
                    f"{self.near.get('hits', 0):,} hits, {self.near.get('invalidations', 0):,} "
                    f"invalidations, {self.near.get('flushes', 0)} flushes."
                ),
            ]
        )


def _lag_json(lags: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(lags)
    if not ordered:
        return {"writes": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 3)

    return {"writes": len(ordered), "p50": at(50), "p99": at(99), "max": round(ordered[-1], 3)}


def measurer(
    op: Operation, tasks: int, timing: Timing, *, yield_each_op: bool = False
) -> Callable[[], Awaitable[Sample]]:
    async def measure() -> Sample:
        return await concurrent_rate(op, tasks=tasks, timing=timing, yield_each_op=yield_each_op)

    return measure


async def invalidation_lag(
    cache: Cache, raw: glide.GlideClient | glide.GlideClusterClient, key: str, full_key: str
) -> list[float]:
    """Milliseconds from another client's acknowledged SET until ``cache.get`` sees it."""
    lags = []
    for version in range(LAG_WRITES):
        # Read twice, so the near cache holds the current value when the write lands.
        await cache.get(key)
        await cache.get(key)
        expected = f"lag-{version}"
        await raw.set(full_key, orjson.dumps(expected))
        acknowledged = time.perf_counter()
        while await cache.get(key) != expected:
            if time.perf_counter() - acknowledged > LAG_GIVE_UP_S:
                raise RuntimeError(f"the near cache served {key!r} stale for {LAG_GIVE_UP_S} s")
            await asyncio.sleep(0)
        lags.append((time.perf_counter() - acknowledged) * 1000)
    return lags


class BareCoalescer:
    """GETs of one loop tick as one MGET of the raw client, one MGET in flight.

    No failover, no counters, no key checks, no decoding: what coalescing alone
    gains over the raw client, the ceiling for ``Cache`` on the same servers.
    """

    def __init__(self, raw: glide.GlideClient | glide.GlideClusterClient) -> None:
        self._raw = raw
        self._gathering: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._in_flight = False
        self._scheduled = False

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        self._gathering.setdefault(key, []).append(waiter)
        if not self._in_flight and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)
        return waiter

    def _send(self) -> None:
        self._scheduled = False
        if self._in_flight or not self._gathering:
            return
        batch, self._gathering = self._gathering, {}
        self._in_flight = True
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        keys: list[glide.TEncodable] = list(batch)
        try:
            found = await self._raw.mget(keys)
        except glide.GlideError as error:
            for waiters in batch.values():
                for waiter in waiters:
                    waiter.set_exception(error)
        else:
            for waiters, data in zip(batch.values(), found, strict=True):
                for waiter in waiters:
                    waiter.set_result(data)
        finally:
            self._in_flight = False
            # As Cache does: the readers this batch wakes run first, and join the next.
            if self._gathering and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._send)


async def single_call_latencies(ops: dict[str, Operation]) -> dict[str, Latency]:
    """Each client in turn makes LATENCY_CALLS calls, one at a time, timed one by one."""
    samples: dict[str, list[float]] = {client: [] for client in ops}
    for number in range(LATENCY_ROUNDS):
        order = list(ops.items()) if number % 2 == 0 else list(reversed(ops.items()))
        for client, op in order:
            for i in range(LATENCY_CALLS):
                started = time.perf_counter()
                await op(i)
                samples[client].append((time.perf_counter() - started) * 1e6)
    return {client: Latency(values) for client, values in samples.items()}


@asynccontextmanager
async def clients(
    topology: Topology,
) -> AsyncIterator[
    tuple[Cache, Cache, Cache, glide.GlideClient | glide.GlideClusterClient, RedisPy]
]:
    on = Cache(topology.settings)
    off = Cache(replace(topology.settings, coalesce=False))
    near = Cache(replace(topology.settings, near_cache=True))
    peer: RedisPy | None = None
    raw = None
    try:
        peer = await topology.connect_redis_py()
        raw = await topology.connect_raw()
        await on.start()
        await off.start()
        await near.start()
        yield on, off, near, raw, peer
    finally:
        await on.close()
        await off.close()
        await near.close()
        if peer is not None:
            await peer.aclose()
        if raw is not None:
            await raw.close()


async def run(
    topology: Topology, timing: Timing, progress: Callable[[str], None]
) -> CoalescingReport:
    prefix = f"{topology.settings.key_prefix}:"
    keys = [f"coalesce:{n}" for n in range(KEY_COUNT)]
    full_keys = [prefix + key for key in keys]
    order = [(i * STRIDE) % KEY_COUNT for i in range(KEY_COUNT)]

    hot_keys = [f"hot:{n}" for n in range(HOT_KEYS)]
    hot_full = [prefix + key for key in hot_keys]
    hot_order = [(i * 7) % HOT_KEYS for i in range(HOT_KEYS)]

    async with clients(topology) as (on, off, near, raw, peer):
        present = keys[::2]
        for n in range(0, len(present), PREPOPULATE_CHUNK):
            await on.set_many(dict.fromkeys(present[n : n + PREPOPULATE_CHUNK], VALUE))
        assert await on.get(keys[0]) == VALUE
        assert await on.get(keys[1]) is None
        await on.set_many(dict.fromkeys(hot_keys, VALUE))
        await wait_filling(near)

        def cache_get(cache: Cache) -> Operation:
            async def get(i: int) -> object:
                return await cache.get(keys[order[i % KEY_COUNT]])

            return get

        async def raw_get(i: int) -> object:
            return await raw.get(full_keys[order[i % KEY_COUNT]])

        async def peer_get(i: int) -> object:
            return await peer.get(full_keys[order[i % KEY_COUNT]])

        async def raw_hot(i: int) -> object:
            return await raw.get(hot_full[hot_order[i % HOT_KEYS]])

        async def near_hot(i: int) -> object:
            return await near.get(hot_keys[hot_order[i % HOT_KEYS]])

        bare = BareCoalescer(raw)

        async def bare_get(i: int) -> object:
            return await bare.get(full_keys[order[i % KEY_COUNT]])

        ops = {
            RAW: raw_get,
            REDIS_PY: peer_get,
            ON: cache_get(on),
            OFF: cache_get(off),
            BARE: bare_get,
        }
        cases: dict[tuple[str, str], Case] = {}
        for client in (RAW, REDIS_PY, ON, OFF, BARE):
            cases[client, MANY] = Case(
                name=f"{topology.name} {MANY} {client}",
                measure=measurer(ops[client], CONCURRENCY, timing),
                details={"client": client, "tasks": CONCURRENCY},
            )
        for client in (RAW, ON):
            cases[client, LONE] = Case(
                name=f"{topology.name} {LONE} {client}",
                measure=measurer(ops[client], 1, timing),
                details={"client": client, "tasks": 1},
            )
        cases[RAW, HOT] = Case(
            name=f"{topology.name} {HOT} {RAW}",
            measure=measurer(raw_hot, CONCURRENCY, timing),
            details={"client": RAW, "tasks": CONCURRENCY, "keys": HOT_KEYS},
        )
        cases[NEAR, HOT] = Case(
            name=f"{topology.name} {HOT} {NEAR}",
            measure=measurer(near_hot, CONCURRENCY, timing, yield_each_op=True),
            details={"client": NEAR, "tasks": CONCURRENCY, "keys": HOT_KEYS, "yields": True},
        )
        before = await check_served_by(on, topology.name, "before measuring")
        progress(f"coalescing on {topology.name}: {len(cases)} cases x {timing.rounds} rounds")
        await run_interleaved(list(cases.values()), rounds=timing.rounds, progress=progress)
        progress(f"coalescing on {topology.name}: 1-task latency")
        latency = await single_call_latencies({RAW: raw_get, ON: cache_get(on)})
        progress(f"near cache on {topology.name}: invalidation lag over {LAG_WRITES} writes")
        lag_ms = await invalidation_lag(near, raw, hot_keys[0], hot_full[0])
        near_stats = (await near.stats())["near"]
        after = await check_served_by(on, topology.name, "after measuring")
        assert after > before, "the cache's Redis tier served none of the measured calls"
        await check_served_by(off, topology.name, "after measuring")
        version = await redis_version(raw)
        coalescing = (await on.stats())["coalescing"]
    return CoalescingReport(
        topology=topology.name,
        redis_version=version,
        timing=timing,
        cases=cases,
        latency=latency,
        lag_ms=lag_ms,
        coalescing=coalescing,
        near=near_stats,
    )


async def wait_filling(cache: Cache) -> None:
    """Until the near cache's listeners are subscribed (it stores nothing before)."""
    deadline = time.monotonic() + 10
    while not (await cache.stats())["near"]["filling"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the near cache's listeners did not subscribe within 10 s")
        await asyncio.sleep(0.05)


def summary(reports: Sequence[CoalescingReport]) -> tuple[dict[str, Ratio], dict[str, Ratio]]:
    targets: dict[str, Ratio] = {}
    evidence: dict[str, Ratio] = {}
    for report in reports:
        for name, ratio in report.targets().items():
            targets[f"{report.topology} {name}"] = ratio
        for name, ratio in report.evidence().items():
            evidence[f"{report.topology} {name}"] = ratio
    return targets, evidence
