"""Start the servers each section needs, run it, print the tables and write the JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import faults, footprint, loaders, memory, shards, single, sync_api, tags, upstash
from benchmarks._harness import Ratio, Timing, table
from pitchey_cache.devtools.local_cluster import LocalCluster, free_port_block
from pitchey_cache.devtools.local_redis import RedisServer
from pitchey_cache.tiers.glide_base import quiet_glide_logs

if TYPE_CHECKING:
    from benchmarks import cluster, coalescing

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "artifacts" / "bench.json"
SECTIONS = (
    "single",
    "cluster",
    "upstash",
    "memory",
    "sync",
    "loaders",
    "tags",
    "faults",
    "coalescing",
    "shards",
)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--duration", type=float, default=1.2, help="seconds measured per case")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best one counts")
    parser.add_argument(
        "--memory-duration", type=float, default=0.5, help="seconds per in-memory case"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON report")
    return parser.parse_args(argv)


def _run_upstash(timing: Timing) -> upstash.UpstashReport:
    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-upstash-") as workdir,
        RedisServer(workdir=Path(workdir)) as server,
    ):
        return asyncio.run(upstash.run(server, timing, _progress))


def _run_single(timing: Timing) -> single.NativeRedisReport:
    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-") as workdir,
        RedisServer(workdir=Path(workdir)) as server,
    ):
        return asyncio.run(single.run(server, timing, _progress))


def _run_sync(timing: Timing) -> sync_api.SyncReport:
    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-sync-") as workdir,
        RedisServer(workdir=Path(workdir)) as server,
    ):
        return asyncio.run(sync_api.run(server, timing, _progress))


def _run_cluster(timing: Timing) -> cluster.ClusterReport:
    try:
        from benchmarks import cluster  # noqa: PLC0415 - redis-py is needed here only
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"the cluster benchmark needs redis-py with hiredis ({exc}); install the dev "
            "extra (pip install -e '.[dev]'), or skip it: --only single --only memory"
        ) from None
    count = cluster.MASTERS * (1 + cluster.REPLICAS)
    with tempfile.TemporaryDirectory(prefix="pitchey-bench-cluster-") as workdir:
        local = LocalCluster(
            workdir=Path(workdir),
            masters=cluster.MASTERS,
            replicas=cluster.REPLICAS,
            base_port=free_port_block(count),
            node_timeout_ms=cluster.NODE_TIMEOUT_MS,
        )
        started = time.monotonic()
        # start() stops whatever it started if it fails; stop() below covers the rest.
        local.start(timeout=60.0)
        try:
            startup_s = time.monotonic() - started
            _progress(f"local cluster ok after {startup_s:.1f} s: {local.seeds}")
            return asyncio.run(cluster.run(local, startup_s, timing, _progress))
        finally:
            local.stop()


def _run_loaders() -> loaders.LoadersReport:
    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-loaders-") as workdir,
        RedisServer(workdir=Path(workdir)) as server,
    ):
        return loaders.run(server, _progress)


def _run_tags(timing: Timing) -> tags.TagsReport:
    with tempfile.TemporaryDirectory(prefix="pitchey-bench-tags-") as workdir:
        local = LocalCluster(
            workdir=Path(workdir),
            masters=3,
            replicas=0,
            base_port=free_port_block(3),
            node_timeout_ms=5000,
        )
        local.start(timeout=60.0)
        try:
            return asyncio.run(tags.run(local, timing, _progress))
        finally:
            local.stop()


def _run_loader_sections(
    sections: Sequence[str],
    timing: Timing,
    report: dict[str, Any],
    tables: list[str],
    evidence: dict[str, Ratio],
) -> None:
    """get_or_set's options on a hot key, and tags against delete_pattern (issue 13)."""
    if "loaders" in sections:
        loading = _run_loaders()
        report["loaders"] = loading.as_json()
        tables.append(loading.render())
    if "tags" in sections:
        tagging = _run_tags(timing)
        report["tags"] = tagging.as_json()
        tables.append(tagging.render())
        evidence["redis-cluster GET: key with 1 tag / untagged"] = tagging.read_ratio()


def _run_coalescing(timing: Timing) -> list[coalescing.CoalescingReport]:
    """Coalescing on one redis-server, then on a local cluster, in the same run."""
    from benchmarks import cluster, coalescing  # noqa: PLC0415 - redis-py is needed here only

    reports = []
    with (
        tempfile.TemporaryDirectory(prefix="pitchey-bench-coalescing-") as workdir,
        RedisServer(workdir=Path(workdir)) as server,
    ):
        reports.append(
            asyncio.run(coalescing.run(coalescing.Topology.single(server), timing, _progress))
        )
    count = cluster.MASTERS * (1 + cluster.REPLICAS)
    with tempfile.TemporaryDirectory(prefix="pitchey-bench-coalescing-cluster-") as workdir:
        local = LocalCluster(
            workdir=Path(workdir),
            masters=cluster.MASTERS,
            replicas=cluster.REPLICAS,
            base_port=free_port_block(count),
            node_timeout_ms=cluster.NODE_TIMEOUT_MS,
        )
        local.start(timeout=60.0)
        try:
            topology = coalescing.Topology.cluster(local)
            reports.append(asyncio.run(coalescing.run(topology, timing, _progress)))
        finally:
            local.stop()
    return reports


def _summary(targets: dict[str, Ratio], evidence: dict[str, Ratio]) -> str:
    def row(name: str, ratio: Ratio) -> list[str]:
        rounds = ratio.rounds
        return [
            name,
            f"{ratio.best:.3f}x",
            f"{ratio.median:.3f}x",
            f"{min(rounds):.2f}-{max(rounds):.2f}x",
            f"{ratio.cpu:.2f}x",
            "-" if ratio.target is None else f">= {ratio.target:g}x",
            ratio.verdict(),
        ]

    rows = [row(name, r) for name, r in targets.items()]
    rows += [row(name, r) for name, r in evidence.items()]
    header = [
        "ratio",
        "best/best",
        "per-round median",
        "per-round range",
        "CPU/op ratio",
        "target",
        "verdict",
    ]
    note = (
        "best/best: best round of one over best round of the other (the figure the targets\n"
        "apply to). per-round: the two measured back to back in each round. CPU/op ratio: the\n"
        "other's process CPU per op over this one's (all threads of the benchmark process, not\n"
        "redis-server); other load moves it much less than ops/s: on a busy machine, trust it\n"
        "more, and compare several runs."
    )
    return "\n".join(["Summary", "", table(header, rows), "", note])


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 - a branch per section
    args = _arguments(argv)
    # Before the first raw glide client: glide's logger is configured once per process,
    # and at its default level it prints a warning line per timed-out request.
    quiet_glide_logs()
    sections = args.only or list(SECTIONS)
    redis_timing = Timing(warmup=args.warmup, duration=args.duration, rounds=args.rounds)
    memory_timing = Timing(
        warmup=min(args.warmup, 0.2), duration=args.memory_duration, rounds=args.rounds
    )
    started_at = datetime.now(UTC)
    clock = time.monotonic()

    report: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "valkey_glide": version("valkey-glide"),
            "redis_py": version("redis"),
            "hiredis": version("hiredis"),
            "upstash_redis": version("upstash-redis"),
            "httpx": version("httpx"),
            "orjson": version("orjson"),
            "django": version("django"),
            "django_redis": version("django-redis"),
            "pitchey_cache": version("pitchey-cache"),
            "event_loop": "asyncio default",
        },
    }
    tables: list[str] = []
    targets: dict[str, Ratio] = {}
    evidence: dict[str, Ratio] = {}
    if "single" in sections:
        native = _run_single(redis_timing)
        report["native_redis"] = native.as_json()
        tables.append(native.render())
        for op, ratio in native.targets().items():
            targets[f"native-redis {op.upper()}: Cache / raw glide 1 client"] = ratio
        for op, ratio in native.pool_evidence().items():
            evidence[
                f"native-redis {op.upper()}: raw glide {single.RAW_CLIENTS} clients / 1 client"
            ] = ratio
    if "cluster" in sections:
        clustered = _run_cluster(redis_timing)
        report["redis_cluster"] = clustered.as_json()
        tables.append(clustered.render())
        for name, ratio in clustered.targets().items():
            targets[f"redis-cluster {name}"] = ratio
    if "upstash" in sections:
        rest = _run_upstash(redis_timing)
        report["upstash_redis"] = rest.as_json()
        tables.append(rest.render())
        # Issue 4 sets no target: the ratio to the official SDK is reported as evidence.
        for name, ratio in rest.ratios().items():
            evidence[f"upstash-redis {name}"] = ratio
    if "faults" in sections:
        # Absolute figures against issue 9's targets, not ratios: nothing to interleave.
        outages = asyncio.run(faults.run(_progress))
        report["faults"] = outages.as_json()
        tables.append(outages.render())
    if "shards" in sections:
        # Shares and seconds per scenario, for both cluster-require-full-coverage settings.
        shard_outages = shards.run(_progress)
        report["shard_outages"] = shard_outages.as_json()
        tables.append(shard_outages.render())
    if "memory" in sections:
        in_memory = asyncio.run(memory.run(memory_timing, _progress))
        report["in_memory"] = in_memory.as_json()
        tables.append(in_memory.render())
        for op, ratio in in_memory.targets().items():
            targets[f"in-memory {op.upper()}: Cache metrics on / off"] = ratio
        evidence["in-memory SET encoding: dumps + exact-size copy / dumps alone"] = (
            in_memory.evidence()["copy"]
        )
        _progress("in-memory footprint: 6 fresh processes, fill past CACHE_MEMORY_MAX_BYTES")
        held = footprint.run()
        report["in_memory_footprint"] = held.as_json()
        tables.append(held.render())

    if "sync" in sections:
        synchronous = _run_sync(redis_timing)
        report["sync_api"] = synchronous.as_json()
        tables.append(synchronous.render())
        for name, ratio in synchronous.ratios().items():
            evidence[f"sync API {name}"] = ratio

    _run_loader_sections(sections, redis_timing, report, tables, evidence)

    if "coalescing" in sections:
        coalesced = _run_coalescing(redis_timing)
        report["coalescing"] = [r.as_json() for r in coalesced]
        tables.extend(r.render() for r in coalesced)
        from benchmarks.coalescing import summary  # noqa: PLC0415 - needs redis-py

        found, shown = summary(coalesced)
        targets.update(found)
        evidence.update(shown)

    report["summary"] = {
        "targets": {name: r.as_json() for name, r in targets.items()},
        "evidence": {name: r.as_json() for name, r in evidence.items()},
        "all_targets_met": all(r.meets for r in targets.values()),
        "elapsed_s": round(time.monotonic() - clock, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    for text in tables:
        print()
        print(text)
    if targets or evidence:
        print()
        print(_summary(targets, evidence))
    print()
    print(f"Written to {args.output} ({report['summary']['elapsed_s']:.0f} s)")
    return 0
