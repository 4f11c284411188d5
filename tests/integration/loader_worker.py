"""One OS process of the multi-process get_or_set tests (and of ``make bench``).

``python -m tests.integration.loader_worker CONFIG_JSON`` runs, from the wall
time ``start_at``, ``tasks`` asyncio tasks that call ``get_or_set`` on one hot
key for ``duration`` seconds against the Redis at ``port``, and prints one JSON
report line: when each loader call started, every caller's latency (with the
wall time it ended), the errors callers saw, the cache's miss count every 50 ms,
and its counters at the end.

With ``"mode": "holder"`` it instead takes the key's lock with a loader that
never finishes, prints ``loading`` once the loader runs, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson

from pitchey_cache import Cache, Settings


def settings(config: dict[str, Any]) -> Settings:
    timeout = int(config.get("command_timeout_ms", 1000))
    return Settings(
        redis_host="127.0.0.1",
        redis_port=int(config["port"]),
        key_prefix="loaders",
        command_timeout_ms=timeout,
        connect_timeout_ms=timeout,
        failover_timeout_ms=int(config.get("failover_timeout_ms", 1000)),
        max_retries=0,
    )


async def hot_key(config: dict[str, Any]) -> dict[str, Any]:
    loads: list[float] = []
    latencies: list[tuple[float, float]] = []
    errors: list[str] = []
    # (wall time, the cache's miss count then), every 50 ms.
    misses: list[tuple[float, int]] = []
    loader_seconds = float(config["loader_seconds"])
    options = config["options"]

    async def loader() -> dict[str, Any]:
        loads.append(time.time())
        await asyncio.sleep(loader_seconds)
        return {"browse": list(range(20)), "at": time.time()}

    async with Cache(settings(config)) as cache:
        await asyncio.sleep(max(0.0, float(config["start_at"]) - time.time()))
        end = time.time() + float(config["duration"])
        pause = float(config.get("pause", 0.02))

        async def caller() -> None:
            while time.time() < end:
                started = time.perf_counter()
                try:
                    value = await cache.get_or_set("hot", loader, int(config["ttl"]), **options)
                    if not isinstance(value, dict):
                        errors.append(f"got {value!r}")
                except Exception as exc:  # noqa: BLE001 - every error is the report's business
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append((time.time(), time.perf_counter() - started))
                await asyncio.sleep(pause)

        async def sample_misses() -> None:
            while time.time() < end:
                misses.append((time.time(), cache.counters.misses))
                await asyncio.sleep(0.05)

        await asyncio.gather(sample_misses(), *(caller() for _ in range(int(config["tasks"]))))
        counters = cache.counters
        return {
            "loads": loads,
            "latencies": latencies,
            "errors": errors,
            "misses": misses,
            "counters": {
                "hits": counters.hits,
                "misses": counters.misses,
                "loads": counters.loads,
                "refreshes": counters.refreshes,
                "lock_waits": counters.lock_waits,
            },
            "active_tier": cache.active_tier,
        }


async def holder(config: dict[str, Any]) -> None:
    async def never() -> str:
        print("loading", flush=True)
        await asyncio.sleep(3600)
        return "never"

    async with Cache(settings(config)) as cache:
        await cache.get_or_set("hot", never, 60, lock=True, lock_ttl=float(config["lock_ttl"]))


def main() -> None:
    config = orjson.loads(sys.argv[1])
    if config.get("mode") == "holder":
        asyncio.run(holder(config))
        return
    report = asyncio.run(hot_key(config))
    sys.stdout.buffer.write(orjson.dumps(report) + b"\n")


if __name__ == "__main__":
    main()
