"""The in-memory tier through ``Cache`` (CACHE_ENABLED=false), and beneath it.

Calls to the in-memory tier never suspend, so two shapes are measured: one
task in a tight loop (the cost of a call, nothing else), and 64 tasks that
each give the event loop a turn after every call, as request handlers do.
Two reference rows put those figures in context: the same calls made on the
``MemoryTier`` directly (what ``Cache`` and the router add on top), and 64
tasks that only yield (what the event loop costs by itself).

The cost of metrics is measured here too, where it weighs most: the same tight
loops on a second cache with CACHE_METRICS_ENABLED=false (no per-operation
latency histograms). Metrics on must keep at least 0.95x of the ops/s.

Two rows show what the tier's exact-size copy of each value costs: orjson.dumps
alone, and orjson.dumps followed by the copy ``MemoryTier`` makes (orjson's
results keep at least 4 KiB of capacity, which CACHE_MEMORY_MAX_BYTES could not
see). What the bound really holds is measured in ``benchmarks/footprint.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks._harness import (
    Case,
    Operation,
    Ratio,
    Sample,
    Timing,
    concurrent_rate,
    run_interleaved,
    table,
    tight_loop_rate,
)
from benchmarks.single import CONCURRENCY, ENCODED, KEY_COUNT, VALUE, VALUE_BYTES
from pitchey_cache import Cache, Settings
from pitchey_cache.tiers import MemoryTier

TIGHT = "1 task, tight loop"
CONCURRENT = f"{CONCURRENCY} tasks, yield after each call"
METRICS_ON = {"get": f"Cache.get, {TIGHT}", "set": f"Cache.set, {TIGHT}"}
METRICS_OFF = {op: f"{name}, metrics off" for op, name in METRICS_ON.items()}
METRICS_TARGET = 0.95
ENCODE_ONLY = f"orjson.dumps alone, {TIGHT}"
ENCODE_AND_COPY = f"orjson.dumps + exact-size copy (what MemoryTier keeps), {TIGHT}"


@dataclass(slots=True)
class MemoryReport:
    cases: list[Case]
    timing: Timing

    def as_json(self) -> dict[str, Any]:
        return {
            "value_bytes": VALUE_BYTES,
            "keys": KEY_COUNT,
            "warmup_s": self.timing.warmup,
            "duration_s": self.timing.duration,
            "rounds": self.timing.rounds,
            "cases": [
                {**case.as_json(), "us_per_op": round(1e6 / case.best, 3)} for case in self.cases
            ],
        }

    def targets(self) -> dict[str, Ratio]:
        """Issue 6: Cache with metrics on at least 0.95x the same Cache with them off."""
        by_name = {case.name: case for case in self.cases}
        return {
            op: Ratio(by_name[METRICS_ON[op]], by_name[METRICS_OFF[op]], METRICS_TARGET)
            for op in METRICS_ON
        }

    def evidence(self) -> dict[str, Ratio]:
        """Issue 16: what the exact-size copy of each stored value costs, no target."""
        by_name = {case.name: case for case in self.cases}
        return {"copy": Ratio(by_name[ENCODE_AND_COPY], by_name[ENCODE_ONLY], None)}

    def render(self) -> str:
        rows = [
            [case.name, f"{case.best:,.0f}", f"{1e6 / case.best:.2f}", f"{case.loop_cpu_us:.2f}"]
            for case in self.cases
        ]
        t = self.timing
        title = (
            f"in-memory tier (CACHE_ENABLED=false), {VALUE_BYTES}-byte values, "
            f"best of {t.rounds} x {t.duration:g} s (after {t.warmup:g} s warm-up); "
            "CPU: median over rounds"
        )
        return "\n".join(
            [
                title,
                "",
                table(["case", "ops/s", "us/op", "loop CPU us/op"], rows),
            ]
        )


def _tight(op: Operation, timing: Timing) -> Callable[[], Awaitable[Sample]]:
    async def measure() -> Sample:
        return await tight_loop_rate(op, timing=timing)

    return measure


def _concurrent(op: Operation, timing: Timing) -> Callable[[], Awaitable[Sample]]:
    async def measure() -> Sample:
        return await concurrent_rate(op, tasks=CONCURRENCY, timing=timing, yield_each_op=True)

    return measure


async def run(timing: Timing, progress: Callable[[str], None]) -> MemoryReport:
    settings = Settings(cache_enabled=False)
    tier = MemoryTier(max_entries=settings.memory_max_entries, max_bytes=settings.memory_max_bytes)
    cache = Cache(settings, tiers=[tier])
    quiet_settings = Settings(cache_enabled=False, metrics_enabled=False)
    quiet_tier = MemoryTier(
        max_entries=settings.memory_max_entries, max_bytes=settings.memory_max_bytes
    )
    quiet = Cache(quiet_settings, tiers=[quiet_tier])
    keys = [f"bench:{n}" for n in range(KEY_COUNT)]
    full_keys = [f"{settings.key_prefix}:{key}" for key in keys]
    ttl = settings.cache_ttl

    async def cache_get(i: int) -> object:
        return await cache.get(keys[i % KEY_COUNT])

    async def cache_set(i: int) -> object:
        return await cache.set(keys[i % KEY_COUNT], VALUE)

    async def quiet_get(i: int) -> object:
        return await quiet.get(keys[i % KEY_COUNT])

    async def quiet_set(i: int) -> object:
        return await quiet.set(keys[i % KEY_COUNT], VALUE)

    async def tier_get(i: int) -> object:
        return await tier.get(full_keys[i % KEY_COUNT])

    async def tier_set(i: int) -> object:
        return await tier.set(full_keys[i % KEY_COUNT], ENCODED, ttl, False)

    async def nothing(_: int) -> object:
        return None

    async def encode_only(_: int) -> object:
        return orjson.dumps(VALUE)

    async def encode_and_copy(_: int) -> object:
        # What MemoryTier stores: an exact-size copy of the encoder's result.
        return b"%b" % orjson.dumps(VALUE)

    async with cache, quiet:
        assert cache.active_tier == "in-memory"
        await cache.set_many(dict.fromkeys(keys, VALUE))
        await quiet.set_many(dict.fromkeys(keys, VALUE))
        assert await cache.get(keys[0]) == VALUE
        assert await tier.get(full_keys[0]) == ENCODED
        cases = [
            Case(METRICS_ON["get"], _tight(cache_get, timing)),
            Case(METRICS_ON["set"], _tight(cache_set, timing)),
            Case(METRICS_OFF["get"], _tight(quiet_get, timing)),
            Case(METRICS_OFF["set"], _tight(quiet_set, timing)),
            Case(f"Cache.get, {CONCURRENT}", _concurrent(cache_get, timing)),
            Case(f"Cache.set, {CONCURRENT}", _concurrent(cache_set, timing)),
            Case(f"MemoryTier.get directly, {TIGHT}", _tight(tier_get, timing)),
            Case(f"MemoryTier.set directly, {TIGHT}", _tight(tier_set, timing)),
            Case(f"no call (event loop alone), {CONCURRENT}", _concurrent(nothing, timing)),
            Case(ENCODE_ONLY, _tight(encode_only, timing)),
            Case(ENCODE_AND_COPY, _tight(encode_and_copy, timing)),
        ]
        progress(f"in-memory: {len(cases)} cases x {timing.rounds} rounds")
        await run_interleaved(cases, rounds=timing.rounds, progress=progress)
    return MemoryReport(cases=cases, timing=timing)
