"""``Cache`` on the redis-cluster tier beside raw valkey-glide and redis-py, on a local cluster.

A :class:`~pitchey_cache.devtools.local_cluster.LocalCluster` (3 masters, 3
replicas) runs on a free block of loopback ports. Its keys cover every one
of the 16384 hash slots, one key per slot, with 100-byte values, so the
keys of any call are spread over all three masters, as a real cache's are.
Two workloads, each with 64 concurrent tasks:

- GET of one key;
- ``get_many`` of 100 keys (about 100 slots, on all three masters).

Three clients take turns in every round:

- ``Cache`` with REDIS_CLUSTER_ENABLED and the cluster's nodes as seeds
  (``get`` / ``get_many``: keys prefixed and values decoded from JSON);
- raw ``GlideClusterClient``, one client (``get`` / ``mget`` of the same
  100 full keys, which glide splits by slot itself);
- redis-py's asyncio ``RedisCluster`` with hiredis (``get`` /
  ``mget_nonatomic``, which pipelines one MGET per slot).

The raw clients return the stored bytes; ``Cache`` decodes them as well,
which is its job. Issue 3's targets: ``Cache`` at least 0.85x raw glide and
at least 2x redis-py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import glide
from redis.asyncio.cluster import ClusterNode, RedisCluster

from benchmarks._harness import Case, Operation, Ratio, Timing, run_interleaved, table
from benchmarks.single import (
    CONCURRENCY,
    ENCODED,
    VALUE,
    VALUE_BYTES,
    check_served_by,
    concurrent_measurer,
    redis_version,
)
from pitchey_cache import Cache, NodeAddress, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster
from pitchey_cache.tiers.cluster import SLOTS, key_slot

MASTERS = 3
REPLICAS = 1
NODE_TIMEOUT_MS = 5000
BATCH = 100
TARGET_VS_GLIDE = 0.85
TARGET_VS_REDIS_PY = 2.0
# A fixed shuffle, so every run and every client reads the same batches.
SHUFFLE_SEED = 20261126
PREPOPULATE_CHUNK = 1024

RAW_GLIDE = "glide GlideClusterClient, 1 client"
CACHE = "Cache (redis-cluster tier)"
REDIS_PY = "redis-py asyncio RedisCluster (hiredis)"
CLIENTS = (RAW_GLIDE, CACHE, REDIS_PY)
GET = "get"
GET_MANY = "get_many"
WORKLOADS = (GET, GET_MANY)


def one_key_per_slot(prefix: str) -> list[str]:
    """Keys ``bench:<n>`` (without ``prefix``) such that the full keys fill every slot once.

    Returned in a fixed random order, so that any 100 consecutive keys are
    about 100 slots spread over every master.
    """
    by_slot: dict[int, str] = {}
    n = 0
    while len(by_slot) < SLOTS:
        key = f"bench:{n}"
        by_slot.setdefault(key_slot(prefix + key), key)
        n += 1
    keys = list(by_slot.values())
    random.Random(SHUFFLE_SEED).shuffle(keys)
    return keys


@dataclass(frozen=True, slots=True)
class TierHealth:
    """The cluster tier's condition and its unhealthy nodes, as ``Cache.cluster_info()`` says.

    An unhealthy node, even a replica that owns no slot, sends every call
    through the router's per-key node checks, so it is part of what was measured.
    """

    condition: str
    unhealthy: dict[str, str | None]  # "address role" -> last error

    @classmethod
    async def of(cls, cache: Cache) -> TierHealth:
        info = await cache.cluster_info()
        return cls(
            condition=str(info["condition"]),
            unhealthy={
                f"{node['address']} {node['role']}": node["lastError"]
                for node in info["nodes"]
                if not node["healthy"]
            },
        )

    def as_json(self) -> dict[str, Any]:
        return {"condition": self.condition, "unhealthy_nodes": self.unhealthy}


@dataclass(slots=True)
class ClusterReport:
    cases: dict[tuple[str, str], Case]  # (client label, "get" | "get_many") -> case
    redis_version: str
    keys_per_master: dict[str, int]
    startup_s: float
    timing: Timing
    # How long Cache.start() took (it probes every node once).
    cache_start_s: float
    # The cache's own view of the cluster (cluster_info()) before and after measuring.
    health_before: TierHealth
    health_after: TierHealth

    def ratio(self, client: str, workload: str, baseline: str, target: float) -> Ratio:
        return Ratio(self.cases[client, workload], self.cases[baseline, workload], target)

    def targets(self) -> dict[str, Ratio]:
        out: dict[str, Ratio] = {}
        for workload in WORKLOADS:
            out[f"{workload}: Cache / raw glide"] = self.ratio(
                CACHE, workload, RAW_GLIDE, TARGET_VS_GLIDE
            )
            out[f"{workload}: Cache / redis-py"] = self.ratio(
                CACHE, workload, REDIS_PY, TARGET_VS_REDIS_PY
            )
        return out

    def as_json(self) -> dict[str, Any]:
        cases = []
        for (_, workload), case in self.cases.items():
            entry = case.as_json()
            if workload == GET_MANY:
                entry["keys_per_s_best"] = round(case.best * BATCH)
            cases.append(entry)
        return {
            "cluster": (
                f"redis-server {self.redis_version}, {MASTERS} masters + "
                f"{MASTERS * REPLICAS} replicas, loopback, cluster-node-timeout {NODE_TIMEOUT_MS}"
            ),
            "startup_s": round(self.startup_s, 2),
            "keys": SLOTS,
            "keys_per_master": self.keys_per_master,
            "get_many_batch": BATCH,
            "concurrency": CONCURRENCY,
            "value_bytes": VALUE_BYTES,
            "warmup_s": self.timing.warmup,
            "duration_s": self.timing.duration,
            "rounds": self.timing.rounds,
            "cache_start_s": round(self.cache_start_s, 2),
            "cache_tier_health_before": self.health_before.as_json(),
            "cache_tier_health_after": self.health_after.as_json(),
            "cases": cases,
            "ratios": {name: r.as_json() for name, r in self.targets().items()},
        }

    def render(self) -> str:
        rows = []
        for workload in WORKLOADS:
            for client in CLIENTS:
                case = self.cases[client, workload]
                keys = BATCH if workload == GET_MANY else 1
                rows.append(
                    [
                        client,
                        workload,
                        f"{case.best:,.0f}",
                        f"{case.best * keys:,.0f}",
                        f"{case.best / self.cases[RAW_GLIDE, workload].best:.2f}x",
                        f"{case.best / self.cases[REDIS_PY, workload].best:.2f}x",
                        f"{case.loop_cpu_us:.1f}",
                        f"{case.process_cpu_us:.1f}",
                    ]
                )
        t = self.timing
        title = (
            f"redis-cluster: {MASTERS} masters + {MASTERS * REPLICAS} replicas "
            f"(redis-server {self.redis_version}, loopback), {CONCURRENCY} tasks, "
            f"{VALUE_BYTES}-byte values, one key per slot, get_many of {BATCH} keys;\n"
            f"ops/s: best of {t.rounds} x {t.duration:g} s (after {t.warmup:g} s warm-up); "
            "CPU: median over rounds, per call"
        )
        header = [
            "client",
            "op",
            "calls/s",
            "keys/s",
            "vs raw glide",
            "vs redis-py",
            "loop CPU us/call",
            "process CPU us/call",
        ]
        lines = [title, "", table(header, rows)]
        for when, health in (("before", self.health_before), ("after", self.health_after)):
            if health.unhealthy:
                lines += [
                    "",
                    f"Note: {when} measuring, the cache's cluster tier was {health.condition}: it "
                    f"served every slot, but counted {len(health.unhealthy)} node(s) unhealthy: "
                    + "; ".join(f"{a} ({e})" for a, e in health.unhealthy.items()),
                ]
        lines += ["", f"Cache.start() took {self.cache_start_s:.2f} s."]
        return "\n".join(lines)


def cache_settings(cluster: LocalCluster) -> Settings:
    return Settings(
        cluster_enabled=True,
        cluster_nodes=tuple(NodeAddress(cluster.host, port) for port in cluster.ports),
    )


def raw_glide_configuration(cluster: LocalCluster) -> glide.GlideClusterClientConfiguration:
    # The seeds and request timeout the cache's tier uses.
    return glide.GlideClusterClientConfiguration(
        [glide.NodeAddress(cluster.host, port) for port in cluster.ports],
        request_timeout=Settings().command_timeout_ms,
    )


def redis_py_client(cluster: LocalCluster) -> RedisCluster:
    # The socket timeout matches the others' command timeout; hiredis parses
    # replies when it is installed (checked in run()).
    timeout = Settings().command_timeout_ms / 1000
    return RedisCluster(
        startup_nodes=[ClusterNode(cluster.host, port) for port in cluster.ports],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def batches(keys: Sequence[str]) -> list[list[str]]:
    return [list(keys[n : n + BATCH]) for n in range(0, len(keys) - BATCH + 1, BATCH)]


def operations(
    cache: Cache,
    raw: glide.GlideClusterClient,
    peer: RedisCluster,
    keys: Sequence[str],
    full_keys: Sequence[str],
) -> dict[tuple[str, str], Operation]:
    key_batches = batches(keys)
    full_batches = batches(full_keys)
    count, batch_count = len(keys), len(key_batches)

    async def raw_get(i: int) -> object:
        return await raw.get(full_keys[i % count])

    async def raw_get_many(i: int) -> object:
        return await raw.mget(full_batches[i % batch_count])

    async def cache_get(i: int) -> object:
        return await cache.get(keys[i % count])

    async def cache_get_many(i: int) -> object:
        return await cache.get_many(key_batches[i % batch_count])

    async def peer_get(i: int) -> object:
        return await peer.get(full_keys[i % count])

    async def peer_get_many(i: int) -> object:
        return await peer.mget_nonatomic(full_batches[i % batch_count])

    return {
        (RAW_GLIDE, GET): raw_get,
        (RAW_GLIDE, GET_MANY): raw_get_many,
        (CACHE, GET): cache_get,
        (CACHE, GET_MANY): cache_get_many,
        (REDIS_PY, GET): peer_get,
        (REDIS_PY, GET_MANY): peer_get_many,
    }


async def keys_per_master(raw: glide.GlideClusterClient, cluster: LocalCluster) -> dict[str, int]:
    """DBSIZE of every master, asked of each server by address."""
    masters = [node.port for node in cluster.nodes() if node.role == "master"]
    sizes: dict[str, int] = {}
    for port in masters:
        reply = await raw.custom_command(["DBSIZE"], glide.ByAddressRoute(cluster.host, port))
        if not isinstance(reply, int):
            raise TypeError(f"DBSIZE on {port} answered {reply!r:.80}")
        sizes[cluster.address(port)] = reply
    return sizes


async def check_same_bytes(
    cache: Cache,
    raw: glide.GlideClusterClient,
    peer: RedisCluster,
    keys: Sequence[str],
    full_keys: Sequence[str],
) -> None:
    """Every client reads the same stored value for the first batch, single and many."""
    first_keys, first_full = batches(keys)[0], batches(full_keys)[0]
    assert await raw.mget(first_full) == [ENCODED] * BATCH
    assert await peer.mget_nonatomic(first_full) == [ENCODED] * BATCH
    assert await cache.get_many(first_keys) == dict.fromkeys(first_keys, VALUE)
    assert await raw.get(first_full[0]) == ENCODED
    assert await peer.get(first_full[0]) == ENCODED
    assert await cache.get(first_keys[0]) == VALUE


async def run(
    cluster: LocalCluster, startup_s: float, timing: Timing, progress: Callable[[str], None]
) -> ClusterReport:
    from redis.utils import HIREDIS_AVAILABLE  # noqa: PLC0415 - only this benchmark needs it

    if not HIREDIS_AVAILABLE:
        raise RuntimeError("redis-py runs without hiredis here: install redis[hiredis]")
    settings = cache_settings(cluster)
    if settings.tier_chain() != ("redis-cluster", "in-memory"):
        raise RuntimeError(f"unexpected tier chain {settings.tier_chain()}")
    prefix = f"{settings.key_prefix}:"
    keys = one_key_per_slot(prefix)
    full_keys = [prefix + key for key in keys]

    cache = Cache(settings)
    raw: glide.GlideClusterClient | None = None
    peer = redis_py_client(cluster)
    try:
        raw = await glide.GlideClusterClient.create(raw_glide_configuration(cluster))
        await peer.initialize()
        started = time.perf_counter()
        await cache.start()
        cache_start_s = time.perf_counter() - started
        for n in range(0, len(keys), PREPOPULATE_CHUNK):
            await cache.set_many(dict.fromkeys(keys[n : n + PREPOPULATE_CHUNK], VALUE))
        per_master = await keys_per_master(raw, cluster)
        if len(per_master) != MASTERS or sum(per_master.values()) != SLOTS:
            raise RuntimeError(f"keys per master {per_master}: expected {SLOTS} over {MASTERS}")
        await check_same_bytes(cache, raw, peer, keys, full_keys)
        before = await check_served_by(cache, "redis-cluster", "before measuring")
        health_before = await TierHealth.of(cache)

        ops = operations(cache, raw, peer, keys, full_keys)
        cases: dict[tuple[str, str], Case] = {}
        for workload in WORKLOADS:
            for client in CLIENTS:
                cases[client, workload] = Case(
                    name=f"{workload} {client}",
                    measure=concurrent_measurer(ops[client, workload], timing),
                    details={
                        "client": client,
                        "op": workload,
                        "keys_per_call": BATCH if workload == GET_MANY else 1,
                    },
                )
        progress(
            f"redis-cluster on {cluster.host}:{cluster.ports[0]}-{cluster.ports[-1]}: "
            f"{len(cases)} cases x {timing.rounds} rounds"
        )
        await run_interleaved(list(cases.values()), rounds=timing.rounds, progress=progress)

        after = await check_served_by(cache, "redis-cluster", "after measuring")
        assert after > before, "the cache's cluster tier served none of the measured calls"
        version = await redis_version(raw)
        health_after = await TierHealth.of(cache)
    finally:
        await cache.close()
        await peer.aclose()
        if raw is not None:
            await raw.close()
    return ClusterReport(
        cases=cases,
        redis_version=version,
        keys_per_master=per_master,
        startup_s=startup_s,
        timing=timing,
        cache_start_s=cache_start_s,
        health_before=health_before,
        health_after=health_after,
    )
