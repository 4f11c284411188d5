"""Concurrent single-key reads of one event-loop tick, sent as one multi-key read.

A Python Redis client pays per call (a future, a crossing into the driver, a
reply frame), not per key: 64 GETs gathered into one multi-key read move
several times more keys per second than 64 separate GETs. The
:class:`ReadCoalescer` sits between :class:`~pitchey_cache.Cache` and the
:class:`~pitchey_cache.resilience.router.FailoverRouter` and gathers reads
into the router's own ``get_many`` call, so failover, node charging and the
invalidation journal stay in the router, in one place.

The rules, each one a guarantee to the callers:

- A read made while nothing is in flight goes out at once as a plain GET: a
  lone caller never waits for a tick, nor pays for a multi-key call.
- Reads made while others are in flight join the batch being gathered; the
  batch leaves at the end of the current loop tick, or, while another batch
  is in flight, as soon as that one is answered or 2 ms have passed (fewer,
  fuller batches, and a stuck batch holds the next one back 2 ms at most), or sooner
  when it holds ``max_keys`` keys or ``max_key_bytes`` bytes of keys. A key
  asked for twice in one batch is fetched once. A batch of one key is a
  plain GET.
- On a cluster, a batch goes out as one multi-key read, which glide splits by
  slot. A master that freezes holds up the other keys of a batch for the
  cluster tier's MGET deadline at most (0.25 s, see ``ClusterTier.get_batch``):
  the batch is then read key by key, and only the frozen master's readers wait
  on. A batch per master would not do better, as glide held MGETs of the
  healthy masters' keys too, and it cost 4-5 us of CPU per key more (three
  router calls and three driver calls per batch).
- A read never joins a batch already sent. So a read made after this
  process's write of a key has returned is sent after that write, and sees it
  (read-your-writes), exactly as without coalescing.
- Each caller waits on a future of its own: a cancelled caller cancels
  nothing for the others, and the batch runs to its end.
- A batch that fails on a tier (a node lost while it was in flight, an
  error) is not served by the next tier as a whole: it is sent again as one
  plain GET per key, so only the failed node's keys go elsewhere, and each
  caller gets its own key's value or error, never another key's. A batch whose keys
  the router would send to different tiers (a node of the first tier is down
  for some of them) goes out as one multi-key read per tier, so no key is served
  by a fallback tier only because it shared a batch with a key of a failed node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

from pitchey_cache.resilience.router import FailoverRouter
from pitchey_cache.stats import CoalescerStats

# A batch leaves early at this many distinct keys, or bytes of keys: bounded
# requests and replies, and a bounded wait for the first caller of a batch.
MAX_BATCH_KEYS: Final = 256
MAX_BATCH_KEY_BYTES: Final = 256 * 1024
# Batches sent and not yet answered at most; readers meanwhile gather into the next
# one, which leaves when one of these is answered, or after MAX_HOLD_S at the latest
# (so a batch stuck on a frozen node holds the others back that long only).
MAX_BATCHES_IN_FLIGHT: Final = 1
MAX_HOLD_S: Final = 0.002

_Waiters = list["asyncio.Future[bytes | None]"]


class ReadCoalescer:
    """Single-key reads -> the router's multi-key read; see the module docstring."""

    def __init__(
        self,
        router: FailoverRouter,
        *,
        max_keys: int = MAX_BATCH_KEYS,
        max_key_bytes: int = MAX_BATCH_KEY_BYTES,
    ) -> None:
        if max_keys < 1 or max_key_bytes < 1:
            raise ValueError("a batch holds at least one key")
        self._router = router
        self._max_keys = max_keys
        self._max_key_bytes = max_key_bytes
        # The batch being gathered this tick: key -> the futures of its callers.
        self._gathering: dict[str, _Waiters] | None = None
        self._gathering_bytes = 0
        self._send_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        # Plain reads and batches sent and not yet answered.
        self._in_flight = 0
        self._batches_in_flight = 0
        self._batches: set[asyncio.Task[None]] = set()
        self.stats = CoalescerStats()

    def __repr__(self) -> str:
        gathering = len(self._gathering) if self._gathering else 0
        return (
            f"<ReadCoalescer [{self._in_flight} in flight, {gathering} keys gathering, "
            f"{self.stats.batches} batches]>"
        )

    def get(self, key: str) -> Awaitable[bytes | None]:
        """The bytes stored at the full key ``key``, or None; errors as the router raises them.

        A batched read is the waiter itself, awaited by the caller: no coroutine
        of its own (one frame less to create and resume per read).
        """
        if not self._in_flight and self._gathering is None:
            return self._direct(key)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        gathering = self._gathering
        if gathering is None:
            gathering = self._gathering = {}
            if self._batches_in_flight < MAX_BATCHES_IN_FLIGHT:
                self._send_handle = loop.call_soon(self._send)
            else:
                self._send_handle = loop.call_later(MAX_HOLD_S, self._send)
        self.stats.joined += 1
        waiters = gathering.get(key)
        if waiters is None:
            gathering[key] = [waiter]
            self._gathering_bytes += len(key)
            if len(gathering) >= self._max_keys or self._gathering_bytes >= self._max_key_bytes:
                self._send()
        else:
            waiters.append(waiter)
        return waiter

    async def _direct(self, key: str) -> bytes | None:
        self.stats.direct += 1
        self._in_flight += 1
        try:
            return await self._get_one(key)
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        """Send what is gathered and wait until every batch in flight is answered."""
        if self._gathering is not None:
            self._send()
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)

    # -- batches ---------------------------------------------------------------

    def _send(self) -> None:
        batch, self._gathering, self._gathering_bytes = self._gathering, None, 0
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        if not batch:
            return
        self._in_flight += 1
        self._batches_in_flight += 1
        task = asyncio.create_task(self._run(batch), name="pitchey-cache read batch")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _get_one(self, key: str) -> bytes | None:
        return await self._router.execute("get", lambda t: t.get(key), keys=(key,))

    async def _run(self, batch: dict[str, _Waiters]) -> None:
        answered = False
        try:
            groups = self._by_tier(batch)
            if len(groups) == 1:
                await self._run_group(batch)
            else:
                self.stats.split += 1
                await asyncio.gather(*(self._run_group(group) for group in groups))
            answered = True
        finally:
            self._in_flight -= 1
            self._batches_in_flight -= 1
            if self._gathering is not None:
                # The readers this batch wakes run first, and join the next one.
                if self._send_handle is not None:
                    self._send_handle.cancel()
                self._send_handle = asyncio.get_running_loop().call_soon(self._send)
            if not answered:
                # Only if this task itself was cancelled (the loop is closing), or a
                # bug raised, is a caller left waiting: its read is cancelled too.
                for waiters in batch.values():
                    _cancel(waiters)

    def _by_tier(self, batch: dict[str, _Waiters]) -> list[dict[str, _Waiters]]:
        """The batch split by the tier the router would send each key to.

        With every node of the first tier healthy this is one check per tier.
        With a node down, its keys go to the next tier in a batch of their own,
        and the others still go to the first tier together.
        """
        states = self._router.states
        keys = list(batch)
        for state in states[:-1]:
            if state.tier.serves(keys):
                return [batch]
            if any(state.tier.serves((key,)) for key in keys):
                break
        else:
            return [batch]
        groups: dict[int, dict[str, _Waiters]] = {}
        last = len(states) - 1
        for key, waiters in batch.items():
            index = next((i for i, s in enumerate(states[:-1]) if s.tier.serves((key,))), last)
            groups.setdefault(index, {})[key] = waiters
        return list(groups.values())

    async def _run_group(self, batch: dict[str, _Waiters]) -> None:
        """Keys one tier serves: one GET, or one multi-key read (key by key if it fails)."""
        keys = list(batch)
        if len(keys) == 1:
            self.stats.singles += 1
            await self._answer(keys[0], batch[keys[0]])
            return
        self.stats.batches += 1
        self.stats.batched_keys += len(keys)
        try:
            found = await self._router.execute(
                "get_many", lambda t: t.get_batch(keys), keys=keys, fall_through=False
            )
        except Exception:  # noqa: BLE001 - retried key by key, each error to its owner
            self.stats.split += 1
            await self._answer_alone(batch)
        else:
            for key, data in zip(keys, found, strict=True):
                _resolve(batch[key], data)

    async def _answer_alone(self, batch: dict[str, _Waiters]) -> None:
        """One plain GET per key, concurrently; each key's callers get its own outcome
        as soon as it comes, so a frozen node's keys hold up no other key's callers."""
        await asyncio.gather(
            *(self._answer(key, waiters) for key, waiters in batch.items()),
            return_exceptions=True,
        )

    async def _answer(self, key: str, waiters: _Waiters) -> None:
        try:
            data = await self._get_one(key)
        except asyncio.CancelledError:
            _cancel(waiters)
            raise
        except Exception as error:  # noqa: BLE001 - the error is its readers'
            _fail(waiters, error)
        else:
            _resolve(waiters, data)


def _resolve(waiters: _Waiters, data: bytes | None) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(data)


def _fail(waiters: _Waiters, error: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


def _cancel(waiters: _Waiters) -> None:
    for waiter in waiters:
        waiter.cancel()


class DirectReads:
    """Every read its own GET through the router: what CACHE_COALESCE=false gives."""

    def __init__(self, router: FailoverRouter) -> None:
        self._router = router

    async def get(self, key: str) -> bytes | None:
        return await self._router.execute("get", lambda t: t.get(key), keys=(key,))
