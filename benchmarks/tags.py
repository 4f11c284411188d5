"""Tags on a local Redis Cluster: invalidating a tag against ``delete_pattern``, and the
read cost a tag adds to ``get``.

100,000 keys on a 3-master cluster, 10,000 of them (``browse:<n>``) tagged
``browse``. ``invalidate_tags("browse")`` deletes one key (the tag's token);
``delete_pattern("browse:*")`` SCANs every master's keyspace and deletes the
10,000 keys. Both are timed once each (they change what they measure), after
checking that each removed exactly the browse entries. Then 64 tasks read a
tagged and an untagged key, in interleaved rounds: a tagged read costs one
more round trip (an MGET of its tags' tokens).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import Case, Ratio, Timing, run_interleaved, table
from benchmarks.single import CONCURRENCY, VALUE, concurrent_measurer
from pitchey_cache import Cache, NodeAddress, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster

KEYS = 100_000
TAGGED = 10_000
CHUNK = 1000
UNTAGGED_GET = "Cache.get, untagged key"
TAGGED_GET = "Cache.get, key with 1 tag"


@dataclass(slots=True)
class TagsReport:
    invalidate_s: float
    delete_pattern_s: float
    deleted_by_pattern: int
    reads: dict[str, Case]
    timing: Timing

    def read_ratio(self) -> Ratio:
        return Ratio(self.reads[TAGGED_GET], self.reads[UNTAGGED_GET])

    def as_json(self) -> dict[str, Any]:
        return {
            "keys": KEYS,
            "tagged_keys": TAGGED,
            "invalidate_tags_ms": round(self.invalidate_s * 1000, 3),
            "delete_pattern_ms": round(self.delete_pattern_s * 1000, 1),
            "delete_pattern_over_invalidate_tags": round(
                self.delete_pattern_s / self.invalidate_s, 1
            ),
            "deleted_by_pattern": self.deleted_by_pattern,
            "reads": [case.as_json() for case in self.reads.values()],
            "tagged_over_untagged_get": self.read_ratio().as_json(),
        }

    def render(self) -> str:
        ratio = self.read_ratio()
        rows = [
            ["invalidate_tags('browse')", f"{self.invalidate_s * 1000:.2f} ms", "1 key deleted"],
            [
                "delete_pattern('browse:*')",
                f"{self.delete_pattern_s * 1000:.1f} ms",
                f"{self.deleted_by_pattern:,} keys deleted, SCAN of {KEYS:,}",
            ],
        ]
        reads = [
            [
                case.name,
                f"{case.best:,.0f}",
                f"{case.process_cpu_us:.1f}",
            ]
            for case in self.reads.values()
        ]
        t = self.timing
        return "\n".join(
            [
                f"tags on redis-cluster (3 masters): {TAGGED:,} tagged among {KEYS:,} keys",
                "",
                table(["invalidate", "took", "what"], rows),
                "",
                f"reads, {CONCURRENCY} tasks, best of {t.rounds} x {t.duration:g} s:",
                table(["read", "ops/s", "process CPU us/call"], reads),
                "",
                (
                    f"tagged / untagged get: {ratio.best:.2f}x ops/s (per round "
                    f"{min(ratio.rounds):.2f}-{max(ratio.rounds):.2f}x)"
                ),
            ]
        )


async def _populate(cache: Cache) -> None:
    for start in range(0, KEYS - TAGGED, CHUNK):
        end = min(start + CHUNK, KEYS - TAGGED)
        await cache.set_many({f"other:{i}": VALUE for i in range(start, end)}, ttl=3600)
    await _tag_browse(cache)


async def _tag_browse(cache: Cache) -> None:
    for start in range(0, TAGGED, CHUNK):
        await asyncio.gather(
            *(
                cache.set(f"browse:{i}", VALUE, 3600, tags=["browse"])
                for i in range(start, start + CHUNK)
            )
        )


async def run(cluster: LocalCluster, timing: Timing, progress: Callable[[str], None]) -> TagsReport:
    settings = Settings(
        cluster_enabled=True,
        cluster_nodes=tuple(NodeAddress(cluster.host, port) for port in cluster.ports),
        key_prefix="tagbench",
    )
    async with Cache(settings) as cache:
        progress(f"  tags: storing {KEYS:,} keys, {TAGGED:,} tagged")
        await _populate(cache)
        assert await cache.get("browse:7") == VALUE

        started = time.perf_counter()
        await cache.invalidate_tags("browse")
        invalidate_s = time.perf_counter() - started
        if await cache.get_many([f"browse:{i}" for i in range(0, TAGGED, 97)]):
            raise RuntimeError("invalidate_tags left browse entries readable")
        if await cache.get("other:7") != VALUE:
            raise RuntimeError("invalidate_tags dropped an untagged entry")

        # The invalidated entries are still stored: the pattern deletes the same keys.
        started = time.perf_counter()
        deleted = await cache.delete_pattern("browse:*")
        delete_pattern_s = time.perf_counter() - started
        if deleted != TAGGED:
            raise RuntimeError(f"delete_pattern deleted {deleted} keys, expected {TAGGED}")
        progress(
            f"  invalidate_tags {invalidate_s * 1000:.2f} ms, "
            f"delete_pattern {delete_pattern_s * 1000:.1f} ms"
        )

        await _tag_browse(cache)

        async def untagged(i: int) -> object:
            return await cache.get(f"other:{i % (KEYS - TAGGED)}")

        async def tagged(i: int) -> object:
            return await cache.get(f"browse:{i % TAGGED}")

        reads = {
            UNTAGGED_GET: Case(UNTAGGED_GET, concurrent_measurer(untagged, timing)),
            TAGGED_GET: Case(TAGGED_GET, concurrent_measurer(tagged, timing)),
        }
        await run_interleaved(list(reads.values()), rounds=timing.rounds, progress=progress)
        return TagsReport(invalidate_s, delete_pattern_s, deleted, reads, timing)
