"""The background task that probes every tier each REDIS_HEALTH_CHECK_INTERVAL."""

from __future__ import annotations

import asyncio
import logging

from pitchey_cache.clock import Clock
from pitchey_cache.resilience.router import FailoverRouter

logger = logging.getLogger("pitchey_cache")


class HealthChecker:
    """Pings every node of every tier on an interval, through the router.

    A failed probe bypasses a tier at once; a successful probe of a bypassed
    tier replays its journal and returns traffic to it.
    """

    def __init__(self, router: FailoverRouter, *, interval: float, clock: Clock) -> None:
        self._router = router
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def __repr__(self) -> str:
        running = self._task is not None and not self._task.done()
        return f"<HealthChecker [{'running' if running else 'stopped'}, {self.rounds} rounds]>"

    async def check_all(self) -> None:
        """One round: probe every tier concurrently."""
        await asyncio.gather(*(self._router.probe(s) for s in self._router.states))
        self.rounds += 1

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pitchey-cache health checker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.check_all()
            except Exception:  # a bug here must not stop health checks for good
                logger.exception("health check round failed")
