"""The in-memory tier through ``Cache`` (CACHE_ENABLED=false), and beneath it.

Calls to the in-memory tier never suspend, so two shapes are measured: one
task in a tight loop (the cost of a call, nothing else), and 64 tasks that
each give the event loop a turn after every call, as request handlers do.
Two reference rows put those figures in context: the same calls made on the
``MemoryTier`` directly (what ``Cache`` and the router add on top), and 64
tasks that only yield (what the event loop costs by itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import (
    Case,
    Operation,
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
    keys = [f"bench:{n}" for n in range(KEY_COUNT)]
    full_keys = [f"{settings.key_prefix}:{key}" for key in keys]
    ttl = settings.cache_ttl

    async def cache_get(i: int) -> object:
        return await cache.get(keys[i % KEY_COUNT])

    async def cache_set(i: int) -> object:
        return await cache.set(keys[i % KEY_COUNT], VALUE)

    async def tier_get(i: int) -> object:
        return await tier.get(full_keys[i % KEY_COUNT])

    async def tier_set(i: int) -> object:
        return await tier.set(full_keys[i % KEY_COUNT], ENCODED, ttl, False)

    async def nothing(_: int) -> object:
        return None

    async with cache:
        assert cache.active_tier == "in-memory"
        await cache.set_many(dict.fromkeys(keys, VALUE))
        assert await cache.get(keys[0]) == VALUE
        assert await tier.get(full_keys[0]) == ENCODED
        cases = [
            Case(f"Cache.get, {TIGHT}", _tight(cache_get, timing)),
            Case(f"Cache.set, {TIGHT}", _tight(cache_set, timing)),
            Case(f"Cache.get, {CONCURRENT}", _concurrent(cache_get, timing)),
            Case(f"Cache.set, {CONCURRENT}", _concurrent(cache_set, timing)),
            Case(f"MemoryTier.get directly, {TIGHT}", _tight(tier_get, timing)),
            Case(f"MemoryTier.set directly, {TIGHT}", _tight(tier_set, timing)),
            Case(f"no call (event loop alone), {CONCURRENT}", _concurrent(nothing, timing)),
        ]
        progress(f"in-memory: {len(cases)} cases x {timing.rounds} rounds")
        await run_interleaved(cases, rounds=timing.rounds, progress=progress)
    return MemoryReport(cases=cases, timing=timing)
