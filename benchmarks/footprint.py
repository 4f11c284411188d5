"""What CACHE_MEMORY_MAX_BYTES really holds: memory used per configured byte.

A memory-only ``Cache`` is filled three times past its byte bound with values of
one size, in a fresh Python process (so its RSS is the cache's and nothing
else's). Two figures per value size, each from its own process:

- ``rss``: growth of the resident set while filling, per configured byte (from
  /proc/self/statm; what a container's memory limit sees);
- ``traced``: bytes tracemalloc counts as still allocated after filling, per
  configured byte (what Python objects hold, without the allocator's slack).

Run it alone with ``python -m benchmarks.footprint``; ``make bench`` shows it in
the memory section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import table
from pitchey_cache import Cache, Settings

VALUE_SIZES = (100, 1_000, 10_000)
MAX_BYTES = 8 * 1024 * 1024
# How far past the bound the fill goes, in configured bytes of encoded values.
FILL_FACTOR = 2
_STATM = Path("/proc/self/statm")


def _rss_bytes() -> int | None:
    try:
        resident_pages = int(_STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _held(traced: bool) -> int | None:
    return tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()


async def _fill(value_bytes: int, max_bytes: int, *, traced: bool) -> dict[str, Any]:
    settings = Settings(
        cache_enabled=False, memory_max_bytes=max_bytes, memory_max_entries=10_000_000
    )
    # A JSON string whose encoding is exactly value_bytes long.
    value = "v" * (value_bytes - 2)
    before = _held(traced)
    async with Cache(settings) as cache:
        for n in range(FILL_FACTOR * max_bytes // value_bytes):
            await cache.set(f"footprint:{n}", value)
        stats = await cache.stats()
        after = _held(traced)
    held = None if before is None or after is None else after - before
    return {
        "value_bytes": value_bytes,
        "max_bytes": max_bytes,
        "measure": "traced" if traced else "rss",
        "held_bytes": held,
        "held_per_configured_byte": None if held is None else round(held / max_bytes, 3),
        "entries": stats["memory"]["entries"],
        "evictions": stats["memory"]["evictions"],
    }


def measure(value_bytes: int, max_bytes: int, *, traced: bool) -> dict[str, Any]:
    """Fill a cache in this process; what it held, per configured byte."""
    if traced:
        tracemalloc.start()
    return asyncio.run(_fill(value_bytes, max_bytes, traced=traced))


@dataclass(slots=True)
class FootprintReport:
    rows: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"max_bytes": MAX_BYTES, "fill_factor": FILL_FACTOR, "rows": self.rows}

    def render(self) -> str:
        by_size: dict[int, dict[str, Any]] = {}
        for row in self.rows:
            by_size.setdefault(row["value_bytes"], {})[row["measure"]] = row

        def ratio(row: dict[str, Any] | None) -> str:
            if row is None or row["held_per_configured_byte"] is None:
                return "-"
            return f"{row['held_per_configured_byte']:.2f}"

        title = (
            f"in-memory footprint: CACHE_MEMORY_MAX_BYTES={MAX_BYTES // (1024 * 1024)} MiB, "
            f"filled {FILL_FACTOR}x past it, one fresh process per figure"
        )
        header = ["value bytes", "entries kept", "RSS / configured", "traced / configured"]
        rows = []
        for size, measures in sorted(by_size.items()):
            any_row = next(iter(measures.values()))
            rows.append(
                [
                    f"{size:,}",
                    f"{any_row['entries']:,}",
                    ratio(measures.get("rss")),
                    ratio(measures.get("traced")),
                ]
            )
        return "\n".join([title, "", table(header, rows)])


def run(
    sizes: Sequence[int] = VALUE_SIZES, max_bytes: int = MAX_BYTES, python: str = sys.executable
) -> FootprintReport:
    """Each figure in a fresh interpreter: RSS never shrinks, and tracemalloc slows RSS runs."""
    rows = []
    for size in sizes:
        for measure_kind in ("rss", "traced"):
            out = subprocess.run(  # noqa: S603 - this interpreter, this module, our arguments
                [
                    python,
                    "-m",
                    "benchmarks.footprint",
                    "--value-bytes",
                    str(size),
                    "--max-bytes",
                    str(max_bytes),
                    *(["--traced"] if measure_kind == "traced" else []),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            rows.append(json.loads(out.stdout))
    return FootprintReport(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__)
    parser.add_argument("--value-bytes", type=int, help="one measurement, printed as JSON")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    parser.add_argument("--traced", action="store_true", help="tracemalloc instead of RSS")
    args = parser.parse_args(argv)
    if args.value_bytes is None:
        print(run(max_bytes=args.max_bytes).render())
    else:
        print(json.dumps(measure(args.value_bytes, args.max_bytes, traced=args.traced)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
