"""Timing loops shared by every benchmark: fixed duration, best of interleaved rounds."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# One call of the operation under test; the argument is a running counter the
# operation may use to pick a key or a client.
Operation = Callable[[int], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Timing:
    """How long each case runs: ``warmup`` seconds unmeasured, then ``duration`` measured."""

    warmup: float
    duration: float
    rounds: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement: operations per second, and CPU time per op.

    ``loop_cpu_us_per_op`` counts only the thread running the event loop
    (where the cache's own code runs); ``process_cpu_us_per_op`` counts every
    thread of this process, so it adds the driver's own threads (glide's
    Rust runtime). Neither counts redis-server or other processes. Other load
    moves them far less than it moves ops/s (it still inflates them, through
    context switches and cold caches: about +-15% seen here on a busy
    2-core machine), so they show where a difference in ops/s comes from.
    """

    ops_per_s: float
    loop_cpu_us_per_op: float
    process_cpu_us_per_op: float


@dataclass(frozen=True, slots=True)
class _Mark:
    ops: int
    wall: float
    loop_cpu: float
    process_cpu: float

    @classmethod
    def now(cls, ops: int) -> _Mark:
        return cls(ops, time.perf_counter(), time.thread_time(), time.process_time())

    def to(self, later: _Mark) -> Sample:
        ops = later.ops - self.ops
        return Sample(
            ops_per_s=ops / (later.wall - self.wall),
            loop_cpu_us_per_op=(later.loop_cpu - self.loop_cpu) * 1e6 / ops,
            process_cpu_us_per_op=(later.process_cpu - self.process_cpu) * 1e6 / ops,
        )


async def concurrent_rate(
    op: Operation, *, tasks: int, timing: Timing, yield_each_op: bool = False
) -> Sample:
    """Throughput of ``tasks`` tasks, each calling ``op`` back to back.

    The count is sampled after the warm-up and again after ``duration``, while
    every task is still busy, so start-up and wind-down are not measured.
    ``yield_each_op`` makes every task give the event loop a turn after each
    call; without it, an operation that never suspends (the in-memory tier)
    would let one task run alone until the end.
    """
    count = 0
    running = True

    async def worker(offset: int) -> None:
        nonlocal count
        i = offset
        while running:
            await op(i)
            count += 1
            i += tasks
            if yield_each_op:
                await asyncio.sleep(0)

    workers = [asyncio.create_task(worker(n)) for n in range(tasks)]
    try:
        await asyncio.sleep(timing.warmup)
        first = _Mark.now(count)
        await asyncio.sleep(timing.duration)
        last = _Mark.now(count)
    finally:
        running = False
        # A failed operation is a failed benchmark: gather raises its exception.
        await asyncio.gather(*workers)
    return first.to(last)


async def tight_loop_rate(op: Operation, *, timing: Timing, batch: int = 1000) -> Sample:
    """Throughput of one task calling ``op`` in a loop, never yielding on purpose.

    The clock is read once per ``batch`` calls so that reading it costs
    nothing measurable.
    """

    async def run_for(seconds: float) -> Sample:
        start = _Mark.now(0)
        deadline = start.wall + seconds
        done = 0
        while True:
            for i in range(done, done + batch):
                await op(i)
            done += batch
            if time.perf_counter() >= deadline:
                return start.to(_Mark.now(done))

    await run_for(timing.warmup)
    return await run_for(timing.duration)


@dataclass(slots=True)
class Case:
    """One measured configuration, with a sample for each round."""

    name: str
    measure: Callable[[], Awaitable[Sample]]
    details: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The best round's ops/s."""
        return max(s.ops_per_s for s in self.samples)

    @property
    def loop_cpu_us(self) -> float:
        """The median event loop CPU time per op over the rounds, in microseconds."""
        return statistics.median(s.loop_cpu_us_per_op for s in self.samples)

    @property
    def process_cpu_us(self) -> float:
        """The median CPU time per op of every thread of this process, in microseconds."""
        return statistics.median(s.process_cpu_us_per_op for s in self.samples)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.details,
            "ops_per_s_best": round(self.best),
            "ops_per_s_rounds": [round(s.ops_per_s) for s in self.samples],
            "loop_cpu_us_per_op_median": round(self.loop_cpu_us, 2),
            "loop_cpu_us_per_op_rounds": [round(s.loop_cpu_us_per_op, 2) for s in self.samples],
            "process_cpu_us_per_op_median": round(self.process_cpu_us, 2),
            "process_cpu_us_per_op_rounds": [
                round(s.process_cpu_us_per_op, 2) for s in self.samples
            ],
        }


def paired_ratios(case: Case, baseline: Case) -> list[float]:
    """``case`` over ``baseline``, round by round.

    The two ran within seconds of each other in every round, so each ratio
    saw about the same machine; the spread of these ratios says how far the
    best-of-rounds ratio can be trusted on a noisy machine.
    """
    return [
        mine.ops_per_s / theirs.ops_per_s
        for mine, theirs in zip(case.samples, baseline.samples, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Ratio:
    """``case`` against ``baseline``: best round over best round, and round by round.

    ``target`` is the least the best-over-best ratio must reach; None marks
    a ratio shown as evidence, with nothing to reach.
    """

    case: Case
    baseline: Case
    target: float | None = None

    @property
    def best(self) -> float:
        return self.case.best / self.baseline.best

    @property
    def rounds(self) -> list[float]:
        return paired_ratios(self.case, self.baseline)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def cpu(self) -> float:
        """The baseline's process CPU per op over the case's.

        The ops/s ratio a CPU-bound client would reach; other load on the
        machine moves it much less than it moves ops/s.
        """
        return self.baseline.process_cpu_us / self.case.process_cpu_us

    @property
    def meets(self) -> bool | None:
        return None if self.target is None else self.best >= self.target

    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "meets" if self.meets else "BELOW"

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case.name,
            "baseline": self.baseline.name,
            "best_over_best": round(self.best, 3),
            "per_round": [round(r, 3) for r in self.rounds],
            "per_round_median": round(self.median, 3),
            "process_cpu_per_op_ratio": round(self.cpu, 3),
            "target": self.target,
            "meets_target": self.meets,
        }


async def run_interleaved(
    cases: Sequence[Case], *, rounds: int, progress: Callable[[str], None]
) -> None:
    """Run every case once per round, alternating the order between rounds.

    Running all cases in turn, rather than all rounds of one case and then the
    next, spreads slow spells of the machine over every case; reversing the
    order cancels any drift within a round.
    """
    for number in range(rounds):
        order = cases if number % 2 == 0 else list(reversed(cases))
        for case in order:
            sample = await case.measure()
            case.samples.append(sample)
            progress(
                f"  round {number + 1}/{rounds}  {case.name:<52} {sample.ops_per_s:>11,.0f} ops/s"
                f"  CPU/op: loop {sample.loop_cpu_us_per_op:7.2f} us,"
                f" process {sample.process_cpu_us_per_op:7.2f} us"
            )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
