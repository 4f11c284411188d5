"""A heartbeat: one node's liveness, on a connection of its own, every few hundred ms.

A killed node closes its connections, and its port refuses new ones: the
heartbeat's connection is closed under it, it connects again at once, and is
refused, all within a millisecond or so on a local network. A frozen node
(SIGSTOP, a long fork, a saturated host) keeps its connections open and says
nothing: the PING goes unanswered for REDIS_HEARTBEAT_TIMEOUT. Either way the
heartbeat reports ``lost`` with the reason, long before a call would time out
inside the driver (REDIS_COMMAND_TIMEOUT). Every answered PING is reported as
``answered``; the health checker decides what that means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pitchey_cache.clock import Clock
from pitchey_cache.tiers.link import LinkError, NodeLink


class Heartbeat:
    """PING one node every ``interval`` seconds; report each answer and each loss."""

    def __init__(
        self,
        address: str,
        open_link: Callable[[str, float], Awaitable[NodeLink]],
        *,
        interval: float,
        timeout: float,
        clock: Clock,
        lost: Callable[[str], None],
        answered: Callable[[], None],
    ) -> None:
        self.address = address
        self._open_link = open_link
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._lost = lost
        self._answered = answered

    def __repr__(self) -> str:
        return f"<Heartbeat {self.address} every {self._interval:g}s, {self._timeout:g}s deadline>"

    async def run(self) -> None:
        link: NodeLink | None = None
        try:
            while True:
                if link is None:
                    try:
                        link = await self._open_link(self.address, self._timeout)
                    except LinkError as exc:
                        self._lost(exc.reason)
                        await self._clock.sleep(self._interval or self._timeout)
                        continue
                reason = await self._beat(link)
                if reason is None:
                    self._answered()
                    if await self._rest(link):
                        continue
                    # Closed under us while resting: connect again at once; a node that
                    # is gone refuses, and that is reported then.
                elif reason:
                    self._lost(reason)
                    await self._clock.sleep(self._interval)
                link.close()
                link = None
        finally:
            if link is not None:
                # Stopped (cancelled): still close the transport before the loop goes.
                await link.aclose()

    async def _beat(self, link: NodeLink) -> str | None:
        """PING once: None when answered, "" when the link was closed, else what went wrong."""
        ping = asyncio.ensure_future(link.ping())
        try:
            await asyncio.wait(
                (ping, link.lost), timeout=self._timeout, return_when="FIRST_COMPLETED"
            )
            if not ping.done():
                # The loop itself may have been late (a caller blocking it): let a reply
                # that is already in the socket be read before judging the node.
                await asyncio.sleep(0)
            if not ping.done():
                if link.lost.done():
                    return ""
                return f"no answer to PING within {self._timeout:g}s (frozen or overloaded)"
            exc = ping.exception()
        finally:
            ping.cancel()
        if exc is None:
            return None
        if isinstance(exc, LinkError) and link.lost.done():
            return ""
        return exc.reason if isinstance(exc, LinkError) else f"PING failed ({exc})"

    async def _rest(self, link: NodeLink) -> bool:
        """Wait one interval; False as soon as the node closes the link."""
        rest = asyncio.ensure_future(self._clock.sleep(self._interval))
        try:
            await asyncio.wait((rest, link.lost), return_when="FIRST_COMPLETED")
        finally:
            rest.cancel()
        return not link.lost.done()
