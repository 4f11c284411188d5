"""Request coalescing: concurrent reads of one tick share one multi-key call, safely.

The chain is a fake remote tier in front of the in-memory tier; the fake counts
every call per method, so each test can say how many calls reached the remote.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest

from pitchey_cache import Cache, CommandError, Settings, TierUnavailable
from pitchey_cache.coalescer import MAX_BATCH_KEYS
from pitchey_cache.serialization import encode
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.tiers.base import NodeHealth
from tests.unit.fakes import FakeClock, FakeTier

PREFIX = "pitchey:"


@contextlib.asynccontextmanager
async def cache_over(remote: FakeTier, **overrides: Any) -> AsyncIterator[Cache]:
    settings = Settings(max_retries=0, **overrides)
    clock = FakeClock(park_sleeps_from=1.0)
    memory = MemoryTier(max_entries=1000, max_bytes=1024 * 1024, clock=clock)
    async with Cache(settings, tiers=[remote, memory], clock=clock) as cache:
        yield cache


class RemoteTier(FakeTier):
    """A fake remote whose every call waits for the network: one loop turn, as a socket does."""

    name: ClassVar[str] = "native-redis"

    async def _enter(self, method: str) -> None:
        await asyncio.sleep(0)
        await super()._enter(method)


@pytest.fixture
def remote() -> FakeTier:
    tier = RemoteTier()
    # Half of the keys read below are present.
    for n in range(0, 400, 2):
        tier.data[f"{PREFIX}k{n}"] = encode(f"value {n}")
    return tier


async def read_all(cache: Cache, keys: Sequence[str]) -> list[Any]:
    return await asyncio.gather(*(cache.get(key, "miss") for key in keys))


def expected(keys: Sequence[str]) -> list[Any]:
    return [f"value {k[1:]}" if int(k[1:]) % 2 == 0 else "miss" for k in keys]


async def test_a_lone_reader_sends_plain_gets(remote: FakeTier) -> None:
    async with cache_over(remote) as cache:
        for n in range(5):
            assert await cache.get(f"k{n}", "miss") == expected([f"k{n}"])[0]
    assert remote.calls["get"] == 5
    assert remote.calls["get_many"] == 0


async def test_concurrent_reads_share_one_multi_key_call(remote: FakeTier) -> None:
    keys = [f"k{n}" for n in range(64)]
    async with cache_over(remote) as cache:
        assert await read_all(cache, keys) == expected(keys)
        stats = (await cache.stats())["coalescing"]
    # The first read found nothing in flight and went alone; the other 63 waited one tick.
    assert remote.calls["get"] == 1
    assert remote.calls["get_many"] == 1
    assert stats["batches"] == 1
    assert stats["batchedKeys"] == 63


async def test_a_key_asked_for_twice_in_a_batch_is_fetched_once(remote: FakeTier) -> None:
    keys = ["k0", *(["k2"] * 10), *(["k3"] * 10)]
    async with cache_over(remote) as cache:
        assert await read_all(cache, keys) == expected(keys)
        stats = (await cache.stats())["coalescing"]
    assert stats["batchedKeys"] == 2


async def test_the_hit_and_miss_counters_count_every_caller(remote: FakeTier) -> None:
    keys = ["k0", *(["k2"] * 4), *(["k3"] * 3)]
    async with cache_over(remote) as cache:
        await read_all(cache, keys)
        counters = (await cache.stats())["cache"]
    assert (counters["hits"], counters["misses"]) == (5, 3)


async def test_batches_are_bounded(remote: FakeTier) -> None:
    keys = [f"k{n}" for n in range(1 + 2 * MAX_BATCH_KEYS + 10)]
    remote.data.update({f"{PREFIX}{k}": encode(f"value {k[1:]}") for k in keys[::2]})
    async with cache_over(remote) as cache:
        assert await read_all(cache, keys) == expected(keys)
        stats = (await cache.stats())["coalescing"]
    assert stats["batches"] == 3
    assert stats["batchedKeys"] == len(keys) - 1


async def test_a_read_after_a_write_never_joins_a_batch_sent_before_it(remote: FakeTier) -> None:
    async with cache_over(remote) as cache:
        await cache.set("k1", "old")
        gate = remote.gates["get_many"] = asyncio.Event()
        # A plain GET goes first, then a batch that the gate holds on the wire.
        early = asyncio.gather(*(cache.get(k) for k in ["k0", "k1", "k2"]))
        await asyncio.sleep(0.01)
        assert remote.calls["get_many"] == 1
        await cache.set("k1", "new")
        # Joining the batch in flight would wait for the gate, and could see "old".
        async with asyncio.timeout(5):
            assert await cache.get("k1") == "new"
        gate.set()
        await early


async def test_a_cancelled_reader_cancels_nothing_for_the_others(remote: FakeTier) -> None:
    async with cache_over(remote) as cache:
        gate = remote.gates["get_many"] = asyncio.Event()
        first = asyncio.create_task(cache.get("k0"))
        readers = [asyncio.create_task(cache.get(k)) for k in ["k2", "k2", "k4"]]
        await asyncio.sleep(0.01)
        readers[0].cancel()
        await asyncio.sleep(0)
        gate.set()
        assert await first == "value 0"
        assert await readers[1] == "value 2"
        assert await readers[2] == "value 4"
        with pytest.raises(asyncio.CancelledError):
            await readers[0]


class OneBadKeyTier(RemoteTier):
    """A remote whose GET of one key is refused (another type is stored there)."""

    bad_key = f"{PREFIX}k2"

    async def get(self, key: str) -> bytes | None:
        if key == self.bad_key:
            self.calls["get"] += 1
            raise CommandError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return await super().get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.bad_key in keys:
            self.calls["get_many"] += 1
            raise CommandError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return await super().get_many(keys)


async def test_a_failed_batch_is_retried_key_by_key_and_each_caller_gets_its_own_answer() -> None:
    remote = OneBadKeyTier()
    remote.data.update({f"{PREFIX}k{n}": encode(f"value {n}") for n in (0, 4, 6)})
    async with cache_over(remote) as cache:
        assert await read_all(cache, ["k0", "k2", "k4", "k5", "k6"]) == [
            "value 0",
            "miss",
            "value 4",
            "miss",
            "value 6",
        ]
        stats = await cache.stats()
    assert remote.calls["get_many"] == 1
    assert stats["coalescing"]["split"] == 1
    assert stats["cache"]["undecodable"] == 1
    # The refused read is the caller's problem, not an outage: the remote still serves.
    assert stats["activeTier"] == "native-redis"


async def test_a_batch_only_multi_key_reads_fail_charges_no_node(remote: FakeTier) -> None:
    # A slot being migrated refuses multi-key reads (TRYAGAIN; glide may retry them
    # until its timeout) while single reads follow the redirect: the node is fine.
    # Single reads are held back, so no success credits the node in between.
    remote.failing.add("get_many")
    singles = remote.gates["get"] = asyncio.Event()
    async with cache_over(remote) as cache:
        rounds = []
        try:
            for _ in range(cache.settings.max_failures + 1):
                rounds.append(asyncio.ensure_future(read_all(cache, ["k0", "k1", "k2"])))
                await asyncio.sleep(0.01)
            assert remote.calls["get_many"] == cache.settings.max_failures + 1
            assert remote.node.failure_count == 0
        finally:
            singles.set()
        for done in rounds:
            assert await done == ["value 0", "miss", "value 2"]
        stats = await cache.stats()
    assert remote.node.healthy
    assert stats["activeTier"] == "native-redis"


async def test_an_outage_during_a_batch_is_served_by_the_next_tier(remote: FakeTier) -> None:
    async with cache_over(remote) as cache:
        remote.failing.add("get_many")
        remote.failing.add("get")
        values = await read_all(cache, ["k0", "k1", "k2"])
    # The memory tier never held these keys: misses, not exceptions.
    assert values == ["miss", "miss", "miss"]


class TwoNodeTier(RemoteTier):
    """A remote with two nodes: keys starting ``pitchey:a`` live on the first.

    While ``second_down`` is set, calls touching the second node's keys fail.
    """

    def __init__(self) -> None:
        super().__init__()
        self.second = NodeHealth(address="fake-redis-2.internal:6379")
        self.second_down = False
        self.second_frozen = asyncio.Event()
        self.second_frozen.set()

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return (self.node, self.second)

    def node_for(self, key: str) -> NodeHealth | None:
        return self.node if key.startswith(f"{PREFIX}a") else self.second

    def _check(self, keys: Sequence[str]) -> None:
        if self.second_down and any(self.node_for(k) is self.second for k in keys):
            raise TierUnavailable(self.name, "timed out")

    async def _frozen(self, keys: Sequence[str]) -> None:
        """While ``second_frozen`` is set, a call on the second node's keys waits."""
        if any(self.node_for(k) is self.second for k in keys):
            await self.second_frozen.wait()

    async def get(self, key: str) -> bytes | None:
        self._check([key])
        await self._frozen([key])
        return await super().get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._check(keys)
        await self._frozen(keys)
        return await super().get_many(keys)

    async def get_batch(self, keys: Sequence[str]) -> list[bytes | None]:
        # As the cluster tier does once its MGET deadline passes (at once here).
        if not self.second_frozen.is_set() and any(self.node_for(k) is self.second for k in keys):
            raise TierUnavailable(self.name, "an MGET held past its deadline", node_fault=False)
        return await self.get_many(keys)


async def test_a_frozen_nodes_keys_hold_up_only_their_own_readers() -> None:
    remote = TwoNodeTier()
    remote.data.update({f"{PREFIX}a1": encode("a1"), f"{PREFIX}b1": encode("b1")})
    async with cache_over(remote) as cache:
        remote.second_frozen.clear()
        reads = [asyncio.ensure_future(cache.get(k, "miss")) for k in ("a1", "a2", "b1")]
        _, pending = await asyncio.wait(reads, timeout=0.05)
        assert [r.result() for r in reads[:2]] == ["a1", "miss"]
        assert pending == {reads[2]}
        remote.second_frozen.set()
        assert await reads[2] == "b1"
        assert remote.node.failure_count == remote.second.failure_count == 0


async def test_a_batch_over_several_nodes_is_one_multi_key_read() -> None:
    # The tier splits it (glide, by slot) and bounds it (ClusterTier.get_many's
    # deadline): one router call and one driver call per batch, not one per node.
    remote = TwoNodeTier()
    remote.data.update({f"{PREFIX}a1": encode("a1"), f"{PREFIX}b1": encode("b1")})
    async with cache_over(remote) as cache:
        values = await read_all(cache, ["a1", "a2", "b1", "b2"])
        stats = (await cache.stats())["coalescing"]
    assert values == ["a1", "miss", "b1", "miss"]
    assert remote.calls["get_many"] == 1
    assert stats["split"] == 0


async def test_keys_of_a_down_node_do_not_drag_the_others_to_the_next_tier() -> None:
    remote = TwoNodeTier()
    remote.data.update({f"{PREFIX}a1": encode("a1"), f"{PREFIX}b1": encode("b1")})
    async with cache_over(remote) as cache:
        remote.second_down = True
        for _ in range(cache.settings.max_failures):
            assert await cache.get("b1") is None
        assert not remote.second.healthy
        values = await read_all(cache, ["a1", "a1", "b1", "a2"])
        stats = (await cache.stats())["coalescing"]
    # a1's node is healthy: the remote serves it; b1's is down: the memory tier misses.
    # The batch went out per tier: a1 and a2 in one multi-key read, b1 to memory.
    assert values == ["a1", "a1", "miss", "miss"]
    assert stats["split"] == 1
    assert remote.calls["get_many"] == 1


async def test_coalescing_can_be_turned_off(remote: FakeTier) -> None:
    keys = [f"k{n}" for n in range(20)]
    async with cache_over(remote, coalesce=False) as cache:
        assert await read_all(cache, keys) == expected(keys)
        stats = (await cache.stats())["coalescing"]
    assert remote.calls["get"] == 20
    assert remote.calls["get_many"] == 0
    assert stats["enabled"] is False
