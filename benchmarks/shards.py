"""A cluster shard's trouble, seen by several client processes: does it stay in that shard?

A local cluster (3 masters, 3 replicas, cluster-node-timeout 2000 ms) runs each
scenario twice, with ``cluster-require-full-coverage`` ``no`` (what local-cluster and
the compose file ship) and ``yes`` (Redis' default). Three client processes, each a
``Cache`` on the guide's default settings with 8 tasks, write increasing versions of
their own keys and read them back: keys of the shard the fault hits (the victim's)
and keys of the two healthy shards. One more task per process does the same with
``set_many`` and ``get_many`` of 4 keys on the healthy shards (multi-key calls take
other paths through glide). The scenarios:

- a master frozen (SIGSTOP) for 1.2 s, less than the node timeout: nothing promoted;
- a master frozen for 3 s: the cluster agrees it failed about when it resumes, and
  its replica is promoted after it resumed (it took writes meanwhile, which that
  promotion discards: a cache must not send it any);
- a master frozen for 4 s, past the node timeout: its replica is promoted;
- a master killed (-9): its replica is promoted; it is restarted and rejoins;
- a replica killed, restarted 2 s later;
- a master restarted (SIGTERM, then started from its nodes.conf).

Figures per scenario and setting, over the three processes:

- ``healthy elsewhere``: the share of calls on healthy shards' keys that another tier
  served, from each cache's own per-node ``servedElsewhere`` counters;
- ``slowest``: the slowest call on healthy shards' keys and on the victim's;
- ``slots back``: from the fault until every process's cache serves every slot from
  the cluster again (its ``slotsServedElsewhere`` is 0), polled every 20 ms;
- ``CLUSTERDOWN``: how long a healthy master said ``cluster_state:fail``, and the
  time healthy shards' slots were served elsewhere outside that window;
- errors and stale reads (a read older than the process's own last write, during the
  scenario or when every key is read back after it).

``python -m benchmarks --only shards`` runs it alone; the integration test
``tests/integration/test_shard_outage.py`` runs the same scenarios and asserts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._harness import table
from benchmarks.faults import victim_and_heir
from pitchey_cache import Cache, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster, NodeStatus, free_port_block
from pitchey_cache.tiers.cluster import key_slot

Progress = Callable[[str], None]

PROCESSES = 3
TASKS = 8
KEYS_PER_GROUP = 24
NODE_TIMEOUT_MS = 2000
SHORT_FREEZE_S = 1.2
FAILOVER_FREEZE_S = 3.0
LONG_FREEZE_S = 4.0
REPLICA_DOWN_S = 2.0
WARMUP_S = 1.0
SETTLE_S = 1.5
ROUND_PAUSE_S = 0.002
POLL_S = 0.02
READY_WITHIN_S = 30.0
OK_WITHIN_S = 30.0
SCENARIOS = (
    "short freeze",
    "freeze into failover",
    "long freeze",
    "kill master",
    "kill replica",
    "restart master",
)
FREEZES = {
    "short freeze": SHORT_FREEZE_S,
    "freeze into failover": FAILOVER_FREEZE_S,
    "long freeze": LONG_FREEZE_S,
}
COVERAGES = ("no", "yes")


# ---------------------------------------------------------------------------
# One client process


def client_settings(seeds: str) -> Settings:
    """What every client process runs: the guide's defaults, only the seeds set."""
    return Settings.from_env(
        {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": seeds}, env_file=None
    )


@dataclass
class _Group:
    """The calls on one group of keys (the healthy shards' or the victim's)."""

    calls: int = 0
    slowest_s: float = 0.0

    def record(self, seconds: float) -> None:
        self.calls += 1
        self.slowest_s = max(self.slowest_s, seconds)


class _Worker:
    def __init__(self, cache: Cache, healthy: Sequence[str], victim: Sequence[str]) -> None:
        self.cache = cache
        self.keys = [("healthy", k) for k in healthy] + [("victim", k) for k in victim]
        self.groups = {"healthy": _Group(), "victim": _Group()}
        self.errors: list[str] = []
        self.stale: list[str] = []
        self.written: dict[str, int] = {}
        prefix = f"{cache.settings.key_prefix}:" if cache.settings.key_prefix else ""
        self.healthy_slots = {key_slot(prefix + k) for k in healthy}
        # Wall-time intervals while any slot (or a healthy shard's slot) was served elsewhere.
        self.unserved: list[list[float]] = []
        self.healthy_unserved: list[list[float]] = []
        self.stopping = False

    async def caller(self, n: int) -> None:
        mine = self.keys[n::TASKS]
        version = 0
        while not self.stopping:
            version += 1
            group, key = mine[version % len(mine)]
            for op in ("set", "get"):
                started = time.perf_counter()
                try:
                    if op == "set":
                        await self.cache.set(key, version)
                        self.written[key] = version
                    else:
                        got = await self.cache.get(key)
                        if isinstance(got, int) and got < version:
                            self.stale.append(f"{key}: read {got} after writing {version}")
                except Exception as exc:  # noqa: BLE001 - any exception reaching a caller counts
                    self.errors.append(f"{op} {key}: {exc!r}")
                self.groups[group].record(time.perf_counter() - started)
            await asyncio.sleep(ROUND_PAUSE_S)

    async def many(self, healthy: Sequence[str]) -> None:
        """``set_many`` then ``get_many`` of 4 keys in healthy shards' slots, in turns."""
        prefix = f"{self.cache.settings.key_prefix}:" if self.cache.settings.key_prefix else ""
        # The hashtag puts each key in the slot of a healthy key.
        keys = [f"many:{{{prefix}{k}}}" for k in healthy]
        version = 0
        while not self.stopping:
            version += 1
            batch = keys[(4 * version) % len(keys) :][:4] or keys[:4]
            for op in ("set_many", "get_many"):
                started = time.perf_counter()
                try:
                    if op == "set_many":
                        await self.cache.set_many(dict.fromkeys(batch, version))
                        self.written.update(dict.fromkeys(batch, version))
                    else:
                        got = await self.cache.get_many(batch)
                        old = {k: v for k, v in got.items() if isinstance(v, int) and v < version}
                        if old:
                            self.stale.append(f"get_many read {old} after writing {version}")
                except Exception as exc:  # noqa: BLE001 - any exception reaching a caller counts
                    self.errors.append(f"{op} {batch}: {exc!r}")
                self.groups["healthy"].record(time.perf_counter() - started)
            await asyncio.sleep(ROUND_PAUSE_S)

    async def watch(self) -> None:
        """Poll this cache's own view: which slots it serves elsewhere, and when."""
        while not self.stopping:
            ranges = (await self.cache.health())["cluster"].get("slotRangesServedElsewhere", [])
            now = time.time()
            healthy = any(lo <= s <= hi for lo, hi in ranges for s in self.healthy_slots)
            for intervals, on in ((self.unserved, bool(ranges)), (self.healthy_unserved, healthy)):
                if on and (not intervals or intervals[-1][1] < now - 2 * POLL_S):
                    intervals.append([now, now])
                elif on:
                    intervals[-1][1] = now
            await asyncio.sleep(POLL_S)

    async def read_back(self) -> None:
        for key, version in self.written.items():
            got = await self.cache.get(key)
            if got is not None and got != version:
                self.stale.append(f"{key}: read back {got!r}, last written {version}")


async def _work(config: dict[str, Any]) -> dict[str, Any]:
    async with Cache(client_settings(config["seeds"])) as cache:
        deadline = time.monotonic() + READY_WITHIN_S
        while (await cache.health())["status"] != "healthy":
            if time.monotonic() > deadline:
                raise SystemExit(f"not healthy within {READY_WITHIN_S:g}s")
            await asyncio.sleep(0.05)
        worker = _Worker(cache, config["healthy"], config["victim"])
        tasks = [asyncio.create_task(worker.caller(n)) for n in range(TASKS)]
        tasks.append(asyncio.create_task(worker.many(config["healthy"])))
        tasks.append(asyncio.create_task(worker.watch()))
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent says stop
        worker.stopping = True
        await asyncio.gather(*tasks)
        await worker.read_back()
        nodes = (await cache.health())["cluster"]["nodes"]
        return {
            "groups": {name: vars(group) for name, group in worker.groups.items()},
            "errors": worker.errors[:10],
            "error_count": len(worker.errors),
            "stale": worker.stale[:10],
            "stale_count": len(worker.stale),
            "served_elsewhere": {n["address"]: n["servedElsewhere"] for n in nodes},
            "unserved": worker.unserved,
            "healthy_unserved": worker.healthy_unserved,
        }


def worker_main() -> None:
    """``python -m benchmarks.shards``: one client process; its config comes on stdin."""
    config = json.loads(sys.stdin.readline())
    result = asyncio.run(_work(config))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# The scenarios, driven from the parent


@dataclass
class ShardOutcome:
    """One scenario under one coverage setting, over every client process."""

    scenario: str
    coverage: str
    fault_at: float  # wall time
    healthy_calls: int
    healthy_elsewhere: int
    healthy_slowest_s: float
    victim_slowest_s: float
    slots_back_s: float  # from the fault until every process served every slot again
    clusterdown: list[tuple[float, float]]  # wall-time windows a healthy master said fail
    # Seconds healthy shards' slots were served elsewhere outside the CLUSTERDOWN windows.
    healthy_unserved_outside_s: float
    errors: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def clusterdown_s(self) -> float:
        return sum(end - start for start, end in self.clusterdown)

    @property
    def healthy_elsewhere_share(self) -> float:
        return self.healthy_elsewhere / self.healthy_calls if self.healthy_calls else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "coverage": self.coverage,
            "healthy_calls": self.healthy_calls,
            "healthy_elsewhere": self.healthy_elsewhere,
            "healthy_elsewhere_share": round(self.healthy_elsewhere_share, 5),
            "healthy_slowest_s": round(self.healthy_slowest_s, 4),
            "victim_slowest_s": round(self.victim_slowest_s, 4),
            "slots_back_s": round(self.slots_back_s, 3),
            "clusterdown_s": round(self.clusterdown_s, 3),
            "healthy_unserved_outside_clusterdown_s": round(self.healthy_unserved_outside_s, 3),
            "errors": len(self.errors),
            "stale_reads": len(self.stale),
        }


def shard_cluster(workdir: Path) -> LocalCluster:
    return LocalCluster(
        workdir=workdir, base_port=free_port_block(6), node_timeout_ms=NODE_TIMEOUT_MS
    )


def set_coverage(cluster: LocalCluster, coverage: str) -> None:
    cluster.config_set("cluster-require-full-coverage", coverage)


def _victim(cluster: LocalCluster, scenario: str) -> tuple[NodeStatus, list[NodeStatus]]:
    """The node the fault hits, and the masters that stay healthy."""
    master, replica = victim_and_heir(cluster)
    masters = sorted(
        (n for n in cluster.nodes() if n.role == "master" and n.slots), key=lambda n: n.port
    )
    if scenario == "kill replica":
        return replica, masters
    return master, [m for m in masters if m.port != master.port]


def _owner(masters: Sequence[NodeStatus], key: str) -> int:
    slot = key_slot(key)
    return next(m.port for m in masters if any(lo <= slot <= hi for lo, hi in m.slots))


def _keys(cluster: LocalCluster, victim: NodeStatus, process: int) -> tuple[list[str], list[str]]:
    """Keys of the healthy shards, and of the victim's shard (its master's, for a replica)."""
    masters = [n for n in cluster.nodes() if n.role == "master" and n.slots]
    shard = victim.master_port if victim.role == "replica" else victim.port
    prefix = "pitchey:"
    healthy: list[str] = []
    hit: list[str] = []
    n = 0
    while len(healthy) < KEYS_PER_GROUP or len(hit) < KEYS_PER_GROUP:
        key = f"shards:{process}:{n}"
        n += 1
        group = hit if _owner(masters, prefix + key) == shard else healthy
        if len(group) < KEYS_PER_GROUP:
            group.append(key)
    return healthy, hit


class _ClusterDownWatch:
    """Polls a healthy master's cluster_state from a thread; records the fail windows."""

    def __init__(self, cluster: LocalCluster, port: int) -> None:
        self.cluster, self.port = cluster, port
        self.windows: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                state = self.cluster.cluster_info(self.port).get("cluster_state")
            except Exception:  # noqa: BLE001 - an unanswered poll says nothing
                state = None
            now = time.time()
            if state == "fail" and down_since is None:
                down_since = now
            elif state == "ok" and down_since is not None:
                self.windows.append((down_since, now))
                down_since = None
            time.sleep(0.05)
        if down_since is not None:
            self.windows.append((down_since, time.time()))

    def __enter__(self) -> _ClusterDownWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _processes(configs: Sequence[dict[str, Any]]) -> Iterator[list[subprocess.Popen[str]]]:
    with ExitStack() as stack:
        # A worker's log (its events) goes to a file, read only when it fails to start.
        logs = [stack.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in configs]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.shards"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            for log in logs
        ]
        try:
            for proc, config in zip(procs, configs, strict=True):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(config) + "\n")
                proc.stdin.flush()
            for proc, log in zip(procs, logs, strict=True):
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    proc.kill()
                    proc.wait()
                    log.seek(0)
                    raise RuntimeError(f"a client process did not start: {log.read()[-2000:]}")
            yield procs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _outside(intervals: Sequence[Sequence[float]], windows: Sequence[tuple[float, float]]) -> float:
    """Seconds of ``intervals`` not covered by any of ``windows``."""
    total = 0.0
    for start, end in intervals:
        covered = sum(max(0.0, min(end, w1) - max(start, w0)) for w0, w1 in windows)
        total += max(0.0, (end - start) - covered)
    return total


def run_scenario(cluster: LocalCluster, scenario: str, coverage: str) -> ShardOutcome:
    """Run one scenario on ``cluster`` (ok on entry, ok on return) under three processes."""
    set_coverage(cluster, coverage)
    cluster.wait_ok(OK_WITHIN_S)
    victim, healthy_masters = _victim(cluster, scenario)
    configs = []
    for process in range(PROCESSES):
        healthy, hit = _keys(cluster, victim, process)
        configs.append({"seeds": cluster.seeds, "healthy": healthy, "victim": hit})
    with (
        _processes(configs) as procs,
        _ClusterDownWatch(cluster, healthy_masters[-1].port) as watch,
    ):
        time.sleep(WARMUP_S)
        fault_at = time.time()
        if scenario in FREEZES:
            cluster.pause(victim.port)
            time.sleep(FREEZES[scenario])
            cluster.resume(victim.port)
        elif scenario == "kill master":
            cluster.kill(victim.port)
            # Its replica is promoted; then it comes back, and rejoins as a replica.
            cluster.wait_ok(OK_WITHIN_S, ports=[p for p in cluster.ports if p != victim.port])
            cluster.start_node(victim.port)
        elif scenario == "kill replica":
            cluster.kill(victim.port)
            time.sleep(REPLICA_DOWN_S)
            cluster.start_node(victim.port)
        else:
            cluster.restart(victim.port)
        cluster.wait_ok(OK_WITHIN_S)
        time.sleep(SETTLE_S)
        results = []
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            results.append(json.loads(out.strip().splitlines()[-1]))
    healthy_addresses = {cluster.address(m.port) for m in healthy_masters}
    unserved_ends = [end for r in results for _, end in r["unserved"] if end >= fault_at]
    return ShardOutcome(
        scenario=scenario,
        coverage=coverage,
        fault_at=fault_at,
        healthy_calls=sum(r["groups"]["healthy"]["calls"] for r in results),
        healthy_elsewhere=sum(
            count
            for r in results
            for address, count in r["served_elsewhere"].items()
            if address in healthy_addresses
        ),
        healthy_slowest_s=max(r["groups"]["healthy"]["slowest_s"] for r in results),
        victim_slowest_s=max(r["groups"]["victim"]["slowest_s"] for r in results),
        slots_back_s=max(unserved_ends, default=fault_at) - fault_at,
        clusterdown=watch.windows,
        healthy_unserved_outside_s=max(
            _outside(r["healthy_unserved"], watch.windows) for r in results
        ),
        errors=[e for r in results for e in r["errors"]],
        stale=[s for r in results for s in r["stale"]],
    )


@dataclass
class ShardReport:
    outcomes: list[ShardOutcome]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "processes": PROCESSES,
            "tasks_per_process": TASKS,
            "node_timeout_ms": NODE_TIMEOUT_MS,
            "scenarios": [o.as_json() for o in self.outcomes],
            "seconds": round(self.seconds, 1),
        }

    def render(self) -> str:
        rows = [
            [
                f"{o.scenario}, full coverage {o.coverage}",
                f"{o.healthy_elsewhere}/{o.healthy_calls} ({o.healthy_elsewhere_share:.2%})",
                f"{o.healthy_slowest_s:.3f}",
                f"{o.victim_slowest_s:.3f}",
                f"{o.slots_back_s:.2f}",
                f"{o.clusterdown_s:.2f}",
                f"{o.healthy_unserved_outside_s:.2f}",
                f"{len(o.errors)}/{len(o.stale)}",
            ]
            for o in self.outcomes
        ]
        header = [
            "shard outage (3 processes x 8 tasks, defaults)",
            "healthy calls elsewhere",
            "healthy slowest s",
            "victim slowest s",
            "slots back s",
            "CLUSTERDOWN s",
            "healthy out s",
            "errors/stale",
        ]
        return (
            f"Shard outages: cluster-node-timeout {NODE_TIMEOUT_MS} ms\n"
            + table(header, rows)
            + "\n(healthy out: seconds healthy shards' slots were served elsewhere outside the "
            "cluster's own CLUSTERDOWN window, worst process)"
        )


def run(progress: Progress) -> ShardReport:
    started = time.perf_counter()
    outcomes: list[ShardOutcome] = []
    with tempfile.TemporaryDirectory(prefix="pitchey-bench-shards-") as tmp:
        cluster = shard_cluster(Path(tmp))
        cluster.start(timeout=60.0)
        try:
            for coverage in COVERAGES:
                for scenario in SCENARIOS:
                    progress(f"shards: {scenario}, cluster-require-full-coverage {coverage}")
                    outcome = run_scenario(cluster, scenario, coverage)
                    outcomes.append(outcome)
                    progress(f"  {json.dumps(outcome.as_json())}")
        finally:
            cluster.stop()
    return ShardReport(outcomes, time.perf_counter() - started)


if __name__ == "__main__":
    worker_main()
