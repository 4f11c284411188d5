"""Request coalescing against real servers: one redis-server and a 6-node cluster.

What a caller would notice is checked: every concurrent reader gets its own key's value
or a miss, a read made after this process's write sees that write, and the reads really
went out as multi-key calls (the ``coalescing`` block of ``stats()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import glide
import pytest

from pitchey_cache import Cache, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster
from pitchey_cache.devtools.local_redis import RedisServer
from tests.integration import test_contract as contract
from tests.integration.test_cluster import cluster_settings, new_cluster, running

READERS = 64
PREFIX = "pitchey:"


@pytest.fixture(scope="module")
def coalescing_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running(new_cluster(tmp_path_factory.mktemp("coalescing-cluster"))) as cluster:
        yield cluster


def present(n: int) -> bool:
    return n % 2 == 0


async def read_concurrently(cache: Cache, count: int) -> list[Any]:
    return await asyncio.gather(*(cache.get(f"k{n}", "miss") for n in range(count)))


async def half_present(cache: Cache, count: int) -> None:
    await cache.set_many({f"k{n}": {"n": n} for n in range(count) if present(n)})


def expected(count: int) -> list[Any]:
    return [{"n": n} if present(n) else "miss" for n in range(count)]


async def check_batched_reads(cache: Cache) -> None:
    await half_present(cache, 200)
    # Several rounds of 200 concurrent readers, half of them on missing keys.
    for _ in range(3):
        assert await read_concurrently(cache, 200) == expected(200)
    stats = await cache.stats()
    figures = stats["coalescing"]
    assert figures["batches"] >= 3
    assert figures["batchedKeys"] >= 3 * 190
    assert stats["cache"]["hits"] == 300
    assert stats["cache"]["misses"] == 300
    assert stats["tiers"][0]["operations"]["failed"] == 0
    assert all(t["operations"]["total"] == 0 for t in stats["tiers"][1:])


async def check_read_your_writes(cache: Cache) -> None:
    """Writers read their own key back at once while readers keep batches in flight."""
    keys = [f"ryw{n}" for n in range(16)]
    stop = asyncio.Event()

    async def reader() -> None:
        n = 0
        while not stop.is_set():
            await cache.get(keys[n % len(keys)])
            n += 1

    async def writer(key: str) -> None:
        for version in range(30):
            await cache.set(key, version)
            assert await cache.get(key) == version
            await cache.delete(key)
            assert await cache.get(key, "gone") == "gone"

    readers = [asyncio.create_task(reader()) for _ in range(READERS)]
    try:
        await asyncio.gather(*(writer(key) for key in keys))
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert (await cache.stats())["coalescing"]["batches"] > 0


# -- one redis-server -----------------------------------------------------------------


async def test_concurrent_reads_are_batched_on_one_redis(redis_server: RedisServer) -> None:
    async with Cache(contract.redis_settings(redis_server)) as cache:
        await check_batched_reads(cache)


async def test_a_read_after_a_write_sees_it_on_one_redis(redis_server: RedisServer) -> None:
    async with Cache(contract.redis_settings(redis_server)) as cache:
        await check_read_your_writes(cache)


async def test_a_key_of_another_type_is_a_miss_for_its_reader_only(
    redis_server: RedisServer,
) -> None:
    client = await glide.GlideClient.create(
        glide.GlideClientConfiguration([glide.NodeAddress(redis_server.host, redis_server.port)])
    )
    try:
        await client.hset(f"{PREFIX}k3", {"field": "value"})
    finally:
        await client.close()
    async with Cache(contract.redis_settings(redis_server)) as cache:
        await half_present(cache, 64)
        assert await read_concurrently(cache, 64) == expected(64)
        assert (await cache.stats())["activeTier"] == "native-redis"


async def test_coalescing_off_sends_plain_gets(redis_server: RedisServer) -> None:
    async with Cache(contract.redis_settings(redis_server, coalesce=False)) as cache:
        await half_present(cache, 64)
        assert await read_concurrently(cache, 64) == expected(64)
        figures = (await cache.stats())["coalescing"]
    assert figures["enabled"] is False
    assert figures["batches"] == 0


# -- a Redis Cluster ------------------------------------------------------------------


def settings_for(cluster: LocalCluster) -> Settings:
    return cluster_settings(cluster)


async def test_concurrent_reads_are_batched_on_the_cluster(
    coalescing_cluster: LocalCluster,
) -> None:
    async with Cache(settings_for(coalescing_cluster)) as cache:
        await cache.delete_pattern("*")
        await check_batched_reads(cache)


async def test_a_read_after_a_write_sees_it_on_the_cluster(
    coalescing_cluster: LocalCluster,
) -> None:
    async with Cache(settings_for(coalescing_cluster)) as cache:
        await check_read_your_writes(cache)


async def test_a_key_of_another_type_in_a_cluster_batch_is_a_miss_for_its_reader_only(
    coalescing_cluster: LocalCluster,
) -> None:
    """A cluster batch is one MGET, split by glide: a key of another type reads as nil,
    a miss for its reader only, and nothing goes to another tier."""
    seeds = [
        glide.NodeAddress(a.host, a.port) for a in settings_for(coalescing_cluster).cluster_nodes
    ]
    client = await glide.GlideClusterClient.create(glide.GlideClusterClientConfiguration(seeds))
    try:
        await client.hset(f"{PREFIX}k5", {"field": "value"})
    finally:
        await client.close()
    async with Cache(settings_for(coalescing_cluster)) as cache:
        await half_present(cache, 64)
        for _ in range(3):
            assert await read_concurrently(cache, 64) == expected(64)
        stats = await cache.stats()
    assert stats["coalescing"]["batches"] >= 1
    assert stats["activeTier"] == "redis-cluster"
    assert all(t["operations"]["total"] == 0 for t in stats["tiers"][1:])
