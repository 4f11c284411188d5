"""What callers feel when a Redis node dies or freezes, on the deployment guide's defaults.

Every case runs with no timing variable set (REDIS_COMMAND_TIMEOUT 3 s,
REDIS_CONNECT_TIMEOUT 5 s, REDIS_FAILOVER_TIMEOUT 10 s, REDIS_HEALTH_CHECK_INTERVAL
30 s, and whatever the other settings default to): that is what users run, and a
test with 200 ms timeouts never meets what they meet. The cache is built from an
environment mapping holding only the addresses, as a deployment builds it.

Under every case with traffic, 16 tasks each write increasing versions of their own
keys (``set``) and read each one back (``get``). Every call is timed; an exception
reaching a task is counted; a read that returns an older version than the task last
wrote is a stale read. After the case, once the cache is back on its first tier, every
key is read once more and must hold its last written version (or be a miss: the
invalidation journal may have deleted it). A ticker measures how long the event loop
was kept from running (``loop stall``), which every call in flight pays.

Cases, each on servers of their own on free loopback ports:

- native-redis, ``kill -9``, restarted 5 s later on the same port and directory
  (append-only file on, so the restarted server still holds its old values and a stale
  read would show);
- native-redis, SIGSTOP for 5 s, then SIGCONT;
- an idle ``pitchey-cache serve`` (a subprocess with no traffic of its own) over one
  redis-server: ``kill -9``, then restart; timed on its ``/api/health/cache`` body;
- redis-cluster (3 masters + 3 replicas, local-cluster's default
  cluster-node-timeout of 5000 ms, append-only files on): SIGSTOP of a master for 3 s,
  below the node timeout, so no replica is promoted and what is measured is the cache;
- redis-cluster, ``kill -9`` of a master, left down until its replica is promoted and
  the cache serves every slot from the cluster again, with an idle ``serve`` watching
  the same cluster; then the old master is restarted and rejoins as a replica.

Figures per case: the calls that overlapped the outage (from the fault to the heal),
the slowest of them and how many took over 0.25 s and over 1.5 s; when the cache
noticed (its active tier left the first tier; its health stopped saying ``healthy``);
when it was back (first tier active and healthy, timed from the heal; on the cluster
kill, every slot served by the cluster again, timed from the kill). Issue 9's targets
are printed beside them. A figure shown as ``>N s`` was not reached within the N
seconds the case waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks._harness import table
from pitchey_cache import Cache, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster, NodeStatus, free_port_block
from pitchey_cache.devtools.local_redis import LOOPBACK, RedisServer, free_port, redis_server_path

TASKS = 16
KEYS_PER_TASK = 8
ROUND_PAUSE_S = 0.001
WARMUP_S = 1.0
SETTLE_S = 0.5
SINGLE_OUTAGE_S = 5.0
# Below local-cluster's default node timeout (5000 ms): no replica is promoted.
CLUSTER_FREEZE_S = 3.0
MASTERS, REPLICAS = 3, 1

# How long a case waits for the cache to come back, or an idle serve to notice, before
# it reports ">N s" and moves on. Generous: on the current defaults some take 30 s.
BACK_WITHIN_S = 25.0
SERVE_NOTICE_WITHIN_S = 40.0
# An idle serve probes a bypassed tier only on its health round (every 30 s).
SERVE_BACK_WITHIN_S = 35.0
CLUSTER_BACK_WITHIN_S = 45.0
CLUSTER_OK_WITHIN_S = 30.0
SERVE_READY_WITHIN_S = 20.0
POLL_S = 0.01
SERVE_POLL_S = 0.05

# Issue 9's targets on the default settings.
AFTER_KILL_TARGET_S = 0.25
FROZEN_TARGET_S = 1.5
FAILBACK_TARGET_S = 2.0
IDLE_SERVE_TARGET_S = 3.0

# Kept across kill -9: redis answers a write only after handing it to the kernel.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")

# The settings that shape failure handling, reported with the figures. Fields a
# version of pitchey-cache does not have are left out.
REPORTED_SETTINGS = (
    "command_timeout_ms",
    "connect_timeout_ms",
    "failover_timeout_ms",
    "health_check_interval_ms",
    "max_failures",
    "max_retries",
    "retry_delay_ms",
    "heartbeat_interval_ms",
    "heartbeat_timeout_ms",
    "fallback_ttl",
)

Progress = Callable[[str], None]


def settings_from(environ: Mapping[str, str]) -> Settings:
    # No .env file: a developer's own file in the checkout must not change the defaults.
    return Settings.from_env(environ, env_file=None)


def single_environ(server: RedisServer) -> dict[str, str]:
    return {"REDIS_HOST": server.host, "REDIS_PORT": str(server.port)}


def cluster_environ(cluster: LocalCluster) -> dict[str, str]:
    return {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": cluster.seeds}


def reported_settings(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in REPORTED_SETTINGS if hasattr(settings, name)}


# ---------------------------------------------------------------------------
# Traffic, and what the callers saw


@dataclass(frozen=True, slots=True)
class Call:
    op: str
    started: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class CallerTraffic:
    """TASKS tasks, each writing increasing versions of its own keys and reading them back."""

    cache: Cache
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    # The last version each key was told, by a set that returned.
    written: dict[str, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._caller(n)) for n in range(TASKS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except Exception as exc:  # noqa: BLE001 - an exception reaching a caller is what is counted
            self.errors.append(f"{op}: {exc!r}")
            return None
        finally:
            self.calls.append(Call(op, started, time.perf_counter()))

    async def _caller(self, n: int) -> None:
        keys = [f"fault:{n}:{i}" for i in range(KEYS_PER_TASK)]
        version = 0
        while not self._stop.is_set():
            version += 1
            key = keys[version % KEYS_PER_TASK]
            await self._timed("set", self.cache.set(key, version))
            self.written[key] = version
            got = await self._timed("get", self.cache.get(key))
            if isinstance(got, int) and got < version:
                self.stale_reads.append(f"{key}: read {got} after writing {version}")
            await asyncio.sleep(ROUND_PAUSE_S)

    def since(self, moment: float) -> list[Call]:
        """Calls still in flight at ``moment`` or started after it."""
        return [c for c in self.calls if c.ended > moment]

    def slowest(self, moment: float) -> float:
        return max((c.seconds for c in self.since(moment)), default=0.0)

    def over(self, moment: float, bound: float) -> list[str]:
        """The five slowest calls since ``moment`` that took over ``bound``, for messages."""
        slow = sorted(
            (c for c in self.since(moment) if c.seconds > bound), key=lambda c: -c.seconds
        )
        return [f"{c.op} at {c.started - moment:+.3f}s took {c.seconds:.3f}s" for c in slow[:5]]

    def overlapping(self, start: float, end: float) -> list[Call]:
        """Calls in flight at some moment between ``start`` and ``end``."""
        return [c for c in self.calls if c.ended > start and c.started < end]

    async def read_back(self) -> tuple[int, int]:
        """Read every key once more: (stale, misses) against the last version written."""
        stale = misses = 0
        for key, version in self.written.items():
            got = await self.cache.get(key)
            if got is None:
                misses += 1
            elif got != version:
                stale += 1
                self.stale_reads.append(f"{key}: read back {got!r}, last written {version}")
        return stale, misses


class LoopStall:
    """The longest the event loop was late waking a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(POLL_S)
            self.worst_s = max(self.worst_s, time.perf_counter() - before - POLL_S)


async def seconds_until(
    check: Callable[[], Awaitable[bool]], *, since: float, within: float
) -> float | None:
    """Seconds from ``since`` until ``check()`` held, or None if not within ``within``."""
    while not await check():
        if time.perf_counter() - since > within:
            return None
        await asyncio.sleep(POLL_S)
    return time.perf_counter() - since


def left_tier(cache: Cache, tier: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cache.active_tier != tier

    return check


def not_healthy(cache: Cache) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool((await cache.health())["status"] != "healthy")

    return check


def back_on(cache: Cache, tier: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cache.active_tier == tier and (await cache.health())["status"] == "healthy"

    return check


def every_slot_on_the_cluster(cache: Cache) -> Callable[[], Awaitable[bool]]:
    """The cluster tier serves every slot: a failed node may remain, no slot goes elsewhere."""

    async def check() -> bool:
        if cache.active_tier != "redis-cluster":
            return False
        return bool((await cache.cluster_info())["condition"] in ("healthy", "degraded"))

    return check


# ---------------------------------------------------------------------------
# Results


@dataclass
class FaultCase:
    """One case's figures; None where the case has no such figure (no traffic, say)."""

    name: str
    window_s: float | None = None
    calls: int | None = None
    slowest_s: float | None = None
    over_quarter_s: int | None = None
    over_1_5_s: int | None = None
    left_tier_s: float | None = None
    not_healthy_s: float | None = None
    back_s: float | None = None
    back_from: str = ""
    errors: int | None = None
    stale_reads: int | None = None
    read_back_misses: int | None = None
    keys: int | None = None
    loop_stall_s: float | None = None
    # Waited this long for a figure that stayed None.
    waited: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def record_traffic(
        self, traffic: CallerTraffic, stall: LoopStall, start: float, end: float
    ) -> None:
        window = traffic.overlapping(start, end)
        self.window_s = end - start
        self.calls = len(window)
        self.slowest_s = max((c.seconds for c in window), default=0.0)
        self.over_quarter_s = sum(1 for c in window if c.seconds > AFTER_KILL_TARGET_S)
        self.over_1_5_s = sum(1 for c in window if c.seconds > FROZEN_TARGET_S)
        self.errors = len(traffic.errors)
        self.loop_stall_s = stall.worst_s
        slow = sorted(
            (c for c in window if c.seconds > AFTER_KILL_TARGET_S), key=lambda c: -c.seconds
        )
        if slow:
            self.notes.append(
                "slowest calls: "
                + "; ".join(
                    f"{c.op} started {c.started - start:+.3f} s from the fault, took {c.seconds:.3f} s"
                    for c in slow[:3]
                )
            )

    def figure(self, name: str, value: float | None) -> str:
        if value is None:
            waited = self.waited.get(name)
            return "-" if waited is None else f">{waited:.0f} s"
        return f"{value:.3f} s"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in (
            "window_s",
            "slowest_s",
            "left_tier_s",
            "not_healthy_s",
            "back_s",
            "loop_stall_s",
        ):
            value = getattr(self, key)
            out[key] = None if value is None else round(value, 4)
        for key in (
            "calls",
            "over_quarter_s",
            "over_1_5_s",
            "errors",
            "stale_reads",
            "read_back_misses",
            "keys",
        ):
            out[key] = getattr(self, key)
        out["back_from"] = self.back_from
        out["not_reached_within_s"] = self.waited
        out["notes"] = self.notes
        out["settings"] = self.settings
        return out


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass
class FaultReport:
    cases: list[FaultCase]
    redis_version: str
    elapsed_s: float

    def _case(self, prefix: str) -> FaultCase | None:
        return next((c for c in self.cases if c.name.startswith(prefix)), None)

    def targets(self) -> list[tuple[str, str, float | None, float, str]]:
        """(target, case, measured, bound, figure name) for issue 9's targets."""
        rows: list[tuple[str, str, float | None, float, str]] = []
        for case in self.cases:
            if case.slowest_s is not None and "kill -9" in case.name:
                rows.append(
                    ("slowest call after kill -9", case.name, case.slowest_s, 0.25, "slowest_s")
                )
            if case.slowest_s is not None and "SIGSTOP" in case.name:
                rows.append(
                    ("slowest call, node frozen", case.name, case.slowest_s, 1.5, "slowest_s")
                )
            if case.back_from in ("restart", "SIGCONT") and case.slowest_s is not None:
                rows.append(("failback after recovery", case.name, case.back_s, 2.0, "back_s"))
            if case.name.startswith("idle serve"):
                rows.append(
                    (
                        "idle serve reports the outage",
                        case.name,
                        case.not_healthy_s,
                        3.0,
                        "not_healthy_s",
                    )
                )
        return rows

    def render(self) -> str:
        header = [
            "case",
            "calls",
            "slowest",
            ">0.25 s",
            ">1.5 s",
            "tier left",
            "not healthy",
            "back",
            "errors",
            "stale",
            "loop stall",
        ]
        rows = []
        for c in self.cases:
            stale = "-"
            if c.stale_reads is not None:
                stale = f"{c.stale_reads} ({c.read_back_misses} of {c.keys} keys missed)"
            rows.append(
                [
                    c.name,
                    _count(c.calls),
                    c.figure("slowest_s", c.slowest_s),
                    _count(c.over_quarter_s),
                    _count(c.over_1_5_s),
                    c.figure("left_tier_s", c.left_tier_s),
                    c.figure("not_healthy_s", c.not_healthy_s),
                    c.figure("back_s", c.back_s) + (f" from {c.back_from}" if c.back_from else ""),
                    _count(c.errors),
                    stale,
                    c.figure("loop_stall_s", c.loop_stall_s),
                ]
            )
        first = self.cases[0].settings if self.cases else {}
        title = (
            f"faults: redis-server {self.redis_version}, loopback, {TASKS} tasks (set + get of "
            f"their own keys), the guide's default settings:\n"
            + ", ".join(f"{k}={v}" for k, v in first.items())
        )
        legend = (
            "calls: calls in flight between the fault and the heal; slowest, >0.25 s, >1.5 s: of\n"
            "those. tier left / not healthy: from the fault until the active tier left the first\n"
            "tier (single Redis; a cluster keeps its tier and sends only the lost node's keys\n"
            "elsewhere) / health stopped saying healthy. back: until the first tier was active and\n"
            "healthy again (cluster kill: every slot served by the cluster again). stale: stale\n"
            "reads under traffic and on reading every key back afterwards. loop stall: the\n"
            "longest the event loop ran late. >N s: not within the N s the case waited."
        )
        target_rows = [
            [
                what,
                case,
                "not reached" if measured is None else f"{measured:.3f} s",
                f"<= {bound:g} s",
                "meets" if measured is not None and measured <= bound else "MISSES",
            ]
            for what, case, measured, bound, _ in self.targets()
        ]
        notes = [f"{c.name}: {n}" for c in self.cases for n in c.notes]
        parts = [title, "", table(header, rows), "", legend]
        if target_rows:
            parts += [
                "",
                "Issue 9's targets on default settings",
                "",
                table(["target", "case", "measured", "target", "verdict"], target_rows),
            ]
        if notes:
            parts += ["", *notes]
        parts += ["", f"fault section: {self.elapsed_s:.0f} s"]
        return "\n".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "redis_version": self.redis_version,
            "tasks": TASKS,
            "keys_per_task": KEYS_PER_TASK,
            "elapsed_s": round(self.elapsed_s, 1),
            "cases": [c.as_json() for c in self.cases],
            "targets": [
                {
                    "target": what,
                    "case": case,
                    "figure": name,
                    "measured_s": None if measured is None else round(measured, 4),
                    "bound_s": bound,
                    "meets": measured is not None and measured <= bound,
                }
                for what, case, measured, bound, name in self.targets()
            ],
        }


# ---------------------------------------------------------------------------
# The idle sidecar


class IdleServe:
    """``pitchey-cache serve`` in a subprocess with only the given variables (and PATH)."""

    def __init__(self, environ: Mapping[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/api/health/cache"
        env = {"PATH": os.environ["PATH"], **environ, "CACHE_HTTP_PORT": str(self.port)}
        # A checkout run without installing (PYTHONPATH=src) stays the code measured.
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._log = (workdir / f"serve-{self.port}.log").open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pitchey_cache", "serve"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._client = httpx.AsyncClient(timeout=1.0)

    async def status(self) -> str | None:
        """The body's ``status``, or None while it does not answer."""
        try:
            response = await self._client.get(self.url)
            return str(response.json()["status"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    async def wait_healthy(self) -> None:
        since = time.perf_counter()
        while await self.status() != "healthy":
            if self._process.poll() is not None:
                raise RuntimeError(f"serve exited with {self._process.returncode}")
            if time.perf_counter() - since > SERVE_READY_WITHIN_S:
                raise RuntimeError(
                    f"serve on {self.url} not healthy within {SERVE_READY_WITHIN_S} s"
                )
            await asyncio.sleep(SERVE_POLL_S)

    async def seconds_until(self, healthy: bool, *, since: float, within: float) -> float | None:
        while (await self.status() == "healthy") != healthy:
            if time.perf_counter() - since > within:
                return None
            await asyncio.sleep(SERVE_POLL_S)
        return time.perf_counter() - since

    async def close(self) -> None:
        await self._client.aclose()
        self._process.terminate()
        try:
            await asyncio.to_thread(self._process.wait, 10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            await asyncio.to_thread(self._process.wait, 10)
        self._log.close()


@contextlib.asynccontextmanager
async def idle_serve(environ: Mapping[str, str], workdir: Path) -> AsyncIterator[IdleServe]:
    serve = IdleServe(environ, workdir)
    try:
        await serve.wait_healthy()
        yield serve
    finally:
        await serve.close()


# ---------------------------------------------------------------------------
# One drill under traffic


@contextlib.asynccontextmanager
async def under_traffic(
    environ: Mapping[str, str],
) -> AsyncIterator[tuple[Cache, CallerTraffic, LoopStall]]:
    settings = settings_from(environ)
    async with Cache(settings) as cache:
        traffic = CallerTraffic(cache)
        stall = LoopStall()
        stall.start()
        traffic.start()
        try:
            await asyncio.sleep(WARMUP_S)
            first = settings.tier_chain()[0]
            if not await back_on(cache, first)():
                raise RuntimeError(f"before the fault the cache was not healthy on {first}")
            yield cache, traffic, stall
        finally:
            await traffic.stop()
            await stall.stop()


async def finish(
    case: FaultCase,
    cache: Cache,
    traffic: CallerTraffic,
    stall: LoopStall,
    outage: tuple[float, float],
) -> None:
    """Let the traffic run a little on the healed tier, stop it, read every key back.

    The outage's calls are counted only now: a call is recorded when it returns, and
    calls in flight at the heal may return after it.
    """
    await asyncio.sleep(SETTLE_S)
    await traffic.stop()
    case.record_traffic(traffic, stall, *outage)
    case.settings = reported_settings(cache.settings)
    stale, misses = await traffic.read_back()
    case.stale_reads = len(traffic.stale_reads)
    case.read_back_misses = misses
    case.keys = len(traffic.written)
    case.errors = len(traffic.errors)
    if stale:
        case.notes.append(f"{stale} keys read back an older version than last written")
    case.notes += [f"stale: {s}" for s in traffic.stale_reads[:3]]
    case.notes += [f"error: {e}" for e in traffic.errors[:3]]


async def single_redis_outage(
    server: RedisServer,
    name: str,
    begin: Callable[[], None],
    end: Callable[[], None],
    back_from: str,
) -> FaultCase:
    case = FaultCase(name, back_from=back_from)
    async with under_traffic(single_environ(server)) as (cache, traffic, stall):
        broken_at = time.perf_counter()
        await asyncio.to_thread(begin)
        left = asyncio.create_task(
            seconds_until(left_tier(cache, "native-redis"), since=broken_at, within=SINGLE_OUTAGE_S)
        )
        unhealthy = asyncio.create_task(
            seconds_until(not_healthy(cache), since=broken_at, within=SINGLE_OUTAGE_S)
        )
        await asyncio.sleep(SINGLE_OUTAGE_S)
        healed_at = time.perf_counter()
        await asyncio.to_thread(end)
        case.left_tier_s, case.not_healthy_s = await left, await unhealthy
        case.waited.update(left_tier_s=SINGLE_OUTAGE_S, not_healthy_s=SINGLE_OUTAGE_S)
        case.back_s = await seconds_until(
            back_on(cache, "native-redis"), since=healed_at, within=BACK_WITHIN_S
        )
        case.waited["back_s"] = BACK_WITHIN_S
        await finish(case, cache, traffic, stall, (broken_at, healed_at))
    return case


async def idle_serve_single(workdir: Path) -> FaultCase:
    case = FaultCase("idle serve, native-redis: kill -9, restart", back_from="restart")
    with RedisServer(workdir=workdir / "idle-serve-redis") as server:
        async with idle_serve(single_environ(server), workdir) as serve:
            killed_at = time.perf_counter()
            await asyncio.to_thread(server.kill)
            case.not_healthy_s = await serve.seconds_until(
                False, since=killed_at, within=SERVE_NOTICE_WITHIN_S
            )
            case.waited["not_healthy_s"] = SERVE_NOTICE_WITHIN_S
            restarted_at = time.perf_counter()
            await asyncio.to_thread(server.start)
            case.back_s = await serve.seconds_until(
                True, since=restarted_at, within=SERVE_BACK_WITHIN_S
            )
            case.waited["back_s"] = SERVE_BACK_WITHIN_S
    case.settings = reported_settings(settings_from(single_environ(server)))
    return case


# ---------------------------------------------------------------------------
# The cluster


def victim_and_heir(cluster: LocalCluster) -> tuple[NodeStatus, NodeStatus]:
    nodes = cluster.nodes()
    victim = min((n for n in nodes if n.role == "master" and n.slots), key=lambda n: n.port)
    heir = next(n for n in nodes if n.role == "replica" and n.master_port == victim.port)
    return victim, heir


def promoted(cluster: LocalCluster, port: int) -> bool:
    try:
        return any(n.port == port and n.role == "master" and n.slots for n in cluster.nodes())
    except OSError:
        return False


async def cluster_freeze(cluster: LocalCluster) -> FaultCase:
    victim, _ = await asyncio.to_thread(victim_and_heir, cluster)
    case = FaultCase(
        f"redis-cluster: SIGSTOP a master for {CLUSTER_FREEZE_S:g} s", back_from="SIGCONT"
    )
    async with under_traffic(cluster_environ(cluster)) as (cache, traffic, stall):
        frozen_at = time.perf_counter()
        await asyncio.to_thread(cluster.pause, victim.port)
        try:
            unhealthy = asyncio.create_task(
                seconds_until(not_healthy(cache), since=frozen_at, within=CLUSTER_FREEZE_S)
            )
            await asyncio.sleep(CLUSTER_FREEZE_S)
        finally:
            await asyncio.to_thread(cluster.resume, victim.port)
        resumed_at = time.perf_counter()
        case.not_healthy_s = await unhealthy
        case.waited["not_healthy_s"] = CLUSTER_FREEZE_S
        case.back_s = await seconds_until(
            back_on(cache, "redis-cluster"), since=resumed_at, within=BACK_WITHIN_S
        )
        case.waited["back_s"] = BACK_WITHIN_S
        await finish(case, cache, traffic, stall, (frozen_at, resumed_at))
    if not await asyncio.to_thread(promoted, cluster, victim.port):
        case.notes.append("the frozen master was failed over by the cluster meanwhile")
    return case


async def cluster_kill(cluster: LocalCluster, workdir: Path) -> list[FaultCase]:
    victim, heir = await asyncio.to_thread(victim_and_heir, cluster)
    case = FaultCase("redis-cluster: kill -9 a master (replica promoted)", back_from="kill")
    sidecar = FaultCase("idle serve, redis-cluster: kill -9 a master")
    environ = cluster_environ(cluster)
    async with (
        idle_serve(environ, workdir) as serve,
        under_traffic(environ) as (cache, traffic, stall),
    ):
        killed_at = time.perf_counter()
        await asyncio.to_thread(cluster.kill, victim.port)
        watcher = asyncio.create_task(
            serve.seconds_until(False, since=killed_at, within=SERVE_NOTICE_WITHIN_S)
        )
        case.not_healthy_s = await seconds_until(
            not_healthy(cache), since=killed_at, within=CLUSTER_BACK_WITHIN_S
        )
        case.waited["not_healthy_s"] = CLUSTER_BACK_WITHIN_S

        async def promoted_now() -> bool:
            return await asyncio.to_thread(promoted, cluster, heir.port)

        promotion = asyncio.create_task(
            seconds_until(promoted_now, since=killed_at, within=CLUSTER_BACK_WITHIN_S)
        )
        if case.not_healthy_s is not None:
            case.back_s = await seconds_until(
                every_slot_on_the_cluster(cache), since=killed_at, within=CLUSTER_BACK_WITHIN_S
            )
        case.waited["back_s"] = CLUSTER_BACK_WITHIN_S
        back_at = time.perf_counter()
        promotion_s = await promotion
        case.notes.append(
            "replica promoted by the cluster "
            + ("not seen" if promotion_s is None else f"{promotion_s:.2f} s")
            + " after the kill"
        )
        # The sidecar's traffic-free view is awaited last; its wait is bounded.
        sidecar.not_healthy_s = await watcher
        sidecar.waited["not_healthy_s"] = SERVE_NOTICE_WITHIN_S

        restarted_at = time.perf_counter()
        await asyncio.to_thread(cluster.restart, victim.port)
        ok_s = await asyncio.to_thread(cluster.wait_ok, CLUSTER_OK_WITHIN_S)
        healthy_s = await seconds_until(
            back_on(cache, "redis-cluster"), since=restarted_at, within=ok_s + BACK_WITHIN_S
        )
        case.notes.append(
            f"old master restarted: cluster ok after {ok_s:.2f} s, the cache healthy "
            + (
                f"not within {ok_s + BACK_WITHIN_S:.0f} s"
                if healthy_s is None
                else f"{healthy_s:.2f} s"
            )
            + " after the restart"
        )
        await finish(case, cache, traffic, stall, (killed_at, back_at))
        if case.stale_reads:
            case.notes.append(
                "a write acknowledged by the master just before kill -9 may not have reached "
                "the promoted replica (asynchronous replication): such a stale read is Redis'"
            )
    sidecar.settings = case.settings
    return [case, sidecar]


@contextlib.contextmanager
def local_cluster(workdir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        workdir=workdir,
        masters=MASTERS,
        replicas=REPLICAS,
        base_port=free_port_block(MASTERS * (1 + REPLICAS)),
        persistence=True,
    )
    cluster.start(timeout=60.0)
    try:
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------------------


def redis_version() -> str:
    done = subprocess.run(  # noqa: S603 - redis-server by its absolute path, fixed arguments
        [redis_server_path(), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    for word in done.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return "unknown"


async def run(progress: Progress) -> FaultReport:
    started = time.perf_counter()
    cases: list[FaultCase] = []
    with tempfile.TemporaryDirectory(prefix="pitchey-bench-faults-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir=workdir / "redis", extra_args=DURABLE)
        server.start()
        try:
            progress(f"faults: native-redis on {server.address}, kill -9 then restart")
            cases.append(
                await single_redis_outage(
                    server,
                    f"native-redis: kill -9, restart after {SINGLE_OUTAGE_S:g} s",
                    server.kill,
                    server.start,
                    "restart",
                )
            )
            progress(f"faults: native-redis, SIGSTOP for {SINGLE_OUTAGE_S:g} s then SIGCONT")
            cases.append(
                await single_redis_outage(
                    server,
                    f"native-redis: SIGSTOP for {SINGLE_OUTAGE_S:g} s",
                    server.pause,
                    server.resume,
                    "SIGCONT",
                )
            )
        finally:
            server.stop()
        progress("faults: an idle pitchey-cache serve, kill -9 of its redis-server")
        cases.append(await idle_serve_single(workdir))

        progress("faults: starting a local cluster (3 masters, 3 replicas, node timeout 5000 ms)")
        with local_cluster(workdir / "cluster") as cluster:
            progress(f"faults: redis-cluster, SIGSTOP a master for {CLUSTER_FREEZE_S:g} s")
            cases.append(await cluster_freeze(cluster))
            await asyncio.to_thread(cluster.wait_ok, CLUSTER_OK_WITHIN_S)
            progress("faults: redis-cluster, kill -9 a master, with an idle serve watching")
            cases += await cluster_kill(cluster, workdir)
    for case in cases:
        progress(
            f"  {case.name}: slowest {case.figure('slowest_s', case.slowest_s)}, "
            f"back {case.figure('back_s', case.back_s)}"
        )
    return FaultReport(cases, redis_version(), time.perf_counter() - started)
