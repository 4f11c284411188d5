"""``get_or_set`` on one hot key from several OS processes, with and without its options.

The workload of issue 13: 3 processes x 40 asyncio tasks call
``get_or_set("hot", loader, ttl=2)`` for 8 s against one redis-server; the
loader sleeps 0.2 s (a slow database query); each task pauses 20 ms between
calls. Each process is ``tests/integration/loader_worker.py``, the same
worker the integration tests run. Figures per configuration:

- loader calls in total, and per TTL period (8 s hold 4);
- callers' latency (p50, p99, max) over the whole run and after warm-up
  (from 1 s after the first loader call), and calls that waited at least
  the loader's time.

Every figure comes from the workers' own records of each call.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks._harness import table
from pitchey_cache.devtools.local_redis import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 3
TASKS = 40
TTL = 2
LOADER_SECONDS = 0.2
DURATION = 8.0
WARM_UP = 1.0
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "no options (per-process single flight)": {},
    "lock=True": {"lock": True},
    "early_refresh=True": {"early_refresh": True},
    "lock=True, early_refresh=True": {"lock": True, "early_refresh": True},
}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q) - 1))]


@dataclass(frozen=True, slots=True)
class LoaderRun:
    name: str
    options: dict[str, Any]
    loads: int
    calls: int
    errors: int
    latencies: list[float]
    warm_latencies: list[float]

    @property
    def loads_per_ttl(self) -> float:
        return self.loads / (DURATION / TTL)

    @property
    def waited(self) -> int:
        """Calls after warm-up that took at least the loader's time: they waited for it."""
        return sum(1 for lat in self.warm_latencies if lat >= LOADER_SECONDS)

    def as_json(self) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float:
            return round(_quantile(values, q) * 1000, 2)

        return {
            "name": self.name,
            "options": self.options,
            "loader_calls": self.loads,
            "loader_calls_per_ttl_period": round(self.loads_per_ttl, 2),
            "caller_calls": self.calls,
            "caller_errors": self.errors,
            "p50_ms": ms(self.latencies, 0.5),
            "p99_ms": ms(self.latencies, 0.99),
            "max_ms": ms(self.latencies, 1.0),
            "after_warm_up_p99_ms": ms(self.warm_latencies, 0.99),
            "after_warm_up_max_ms": ms(self.warm_latencies, 1.0),
            "after_warm_up_calls_that_waited_for_the_loader": self.waited,
        }


@dataclass(slots=True)
class LoadersReport:
    runs: list[LoaderRun]

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": (
                f"{PROCESSES} processes x {TASKS} tasks, one hot key, loader {LOADER_SECONDS} s, "
                f"ttl {TTL} s, {DURATION:g} s, 20 ms pause between calls, one redis-server"
            ),
            "runs": [run.as_json() for run in self.runs],
        }

    def render(self) -> str:
        rows = []
        for run in self.runs:
            j = run.as_json()
            rows.append(
                [
                    run.name,
                    str(run.loads),
                    f"{run.loads_per_ttl:.2f}",
                    f"{run.calls:,}",
                    f"{j['p50_ms']:.1f}",
                    f"{j['p99_ms']:.1f}",
                    f"{j['max_ms']:.1f}",
                    f"{j['after_warm_up_p99_ms']:.1f}",
                    str(run.waited),
                    str(run.errors),
                ]
            )
        header = [
            "get_or_set options",
            "loader calls",
            "per TTL",
            "calls",
            "p50 ms",
            "p99 ms",
            "max ms",
            "warm p99 ms",
            "warm waits",
            "errors",
        ]
        title = (
            f"get_or_set, one hot key: {PROCESSES} processes x {TASKS} tasks, loader "
            f"{LOADER_SECONDS} s, ttl {TTL} s, {DURATION:g} s ({DURATION / TTL:g} TTL periods);\n"
            f"warm: from {WARM_UP:g} s after the first loader call; waits: warm calls that "
            f"took >= the loader's {LOADER_SECONDS} s"
        )
        return "\n".join([title, "", table(header, rows)])


def _worker(port: int, start_at: float, options: dict[str, Any]) -> subprocess.Popen[bytes]:
    config = {
        "port": port,
        "start_at": start_at,
        "duration": DURATION,
        "tasks": TASKS,
        "ttl": TTL,
        "loader_seconds": LOADER_SECONDS,
        "options": options,
    }
    return subprocess.Popen(  # noqa: S603 - our own module, with our own arguments
        [sys.executable, "-m", "tests.integration.loader_worker", orjson.dumps(config).decode()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _flush(server: RedisServer) -> None:
    import glide  # noqa: PLC0415 - only for this one command

    client = await glide.GlideClient.create(
        glide.GlideClientConfiguration([glide.NodeAddress(server.host, server.port)])
    )
    try:
        await client.custom_command(["FLUSHALL"])
    finally:
        await client.close()


def _one(server: RedisServer, name: str, options: dict[str, Any]) -> LoaderRun:
    asyncio.run(_flush(server))
    start_at = time.time() + 3.0
    processes = [_worker(server.port, start_at, options) for _ in range(PROCESSES)]
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed: {stderr.decode(errors='replace')[-2000:]}")
        reports.append(orjson.loads(stdout.splitlines()[-1]))
    loads = sorted(t for r in reports for t in r["loads"])
    warm = (loads[0] if loads else start_at) + WARM_UP
    latencies = [lat for r in reports for _, lat in r["latencies"]]
    warm_latencies = [lat for r in reports for at, lat in r["latencies"] if at - lat >= warm]
    return LoaderRun(
        name=name,
        options=options,
        loads=len(loads),
        calls=len(latencies),
        errors=sum(len(r["errors"]) for r in reports),
        latencies=latencies,
        warm_latencies=warm_latencies,
    )


def run(server: RedisServer, progress: Callable[[str], None]) -> LoadersReport:
    runs = []
    for name, options in CONFIGURATIONS.items():
        result = _one(server, name, options)
        p99 = statistics.quantiles(result.latencies, n=100)[98] if result.latencies else math.nan
        progress(
            f"  {name:<40} {result.loads:>3} loader calls, p99 {p99 * 1000:7.1f} ms, "
            f"{result.waited} warm waits"
        )
        runs.append(result)
    return LoadersReport(runs)
