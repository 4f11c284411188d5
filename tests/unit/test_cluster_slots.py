"""Which hash slots a cluster tier serves, from a topology read (no server needed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pitchey_cache.config import NodeAddress, Settings
from pitchey_cache.errors import TierUnavailable
from pitchey_cache.redis_text import parse_cluster_nodes
from pitchey_cache.tiers import cluster as cluster_module
from pitchey_cache.tiers.cluster import TOPOLOGY_GRACE_S, ClusterTier

TOPOLOGY = """\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
b1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
"""


SETTINGS = Settings(cluster_enabled=True, cluster_nodes=(NodeAddress("127.0.0.1", 7000),))


def tier() -> ClusterTier:
    cluster = ClusterTier(SETTINGS)
    cluster._apply_topology(parse_cluster_nodes(TOPOLOGY))
    return cluster


def test_every_slot_is_served_while_every_master_is_healthy() -> None:
    assert tier().unserved_slots() == ()


def test_a_down_masters_slots_are_served_elsewhere_and_a_replica_changes_nothing() -> None:
    cluster = tier()
    for n in cluster.nodes:
        n.healthy = n.address not in {"127.0.0.1:7001", "127.0.0.1:7003"}
    assert cluster.unserved_slots() == ((5461, 10922),)
    for n in cluster.nodes:
        n.healthy = n.address != "127.0.0.1:7002"
    assert cluster.unserved_slots() == ((10923, 16383),)


def test_slots_no_master_owns_are_served_elsewhere() -> None:
    cluster = ClusterTier(SETTINGS)
    cluster._apply_topology(parse_cluster_nodes(TOPOLOGY.replace(" 0-5460", " 0-99")))
    assert cluster.unserved_slots() == ((100, 5460),)


def test_before_the_first_topology_read_no_slot_is_known_unserved() -> None:
    cluster = ClusterTier(SETTINGS)
    assert cluster.unserved_slots() == ()


# After a failover of a1 to b1 (config epoch 4); a1 resumed from a freeze before it
# heard of it, still claiming its slots with its old epoch, and answers first.
PROMOTED = """\
a1 127.0.0.1:7000@17000 master,fail - 0 0 1 connected
a2 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
b1 127.0.0.1:7003@17003 master - 0 0 4 connected 0-5460
"""
RESUMED = TOPOLOGY


class HeldMget:
    """Stands in for the glide client: MGET is never answered, GET at once."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data
        self.mgets = 0

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.mgets += 1
        await asyncio.Event().wait()
        raise AssertionError(f"unreachable: {keys} were never to be answered")

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)


async def test_an_mget_glide_holds_is_read_again_key_by_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # glide was seen holding MGETs of healthy masters' keys while another master froze.
    monkeypatch.setattr(cluster_module, "MGET_DEADLINE_S", 0.05)
    cluster = tier()
    client = HeldMget({"pitchey:a": b"1", "pitchey:c": b"3"})
    cluster._client = client  # type: ignore[assignment]
    started = time.perf_counter()
    found = await cluster.get_many(["pitchey:a", "pitchey:b", "pitchey:c"])
    assert found == [b"1", None, b"3"]
    assert client.mgets == 1
    assert time.perf_counter() - started < 1


async def test_a_batch_whose_mget_glide_holds_is_given_up_blaming_no_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The coalescer then reads it key by key, each key its own call.
    monkeypatch.setattr(cluster_module, "MGET_DEADLINE_S", 0.05)
    cluster = tier()
    cluster._client = HeldMget({})  # type: ignore[assignment]
    with pytest.raises(TierUnavailable) as raised:
        await cluster.get_batch(["pitchey:a", "pitchey:b"])
    assert not raised.value.node_fault


class NodeAnswers:
    """Stands in for the glide client: each node's CLUSTER NODES, after its own delay."""

    def __init__(self, answers: dict[int, tuple[float, str]]) -> None:
        self.answers = answers

    async def custom_command(self, args: list[str], route: Any) -> bytes:
        if args == ["CLUSTER", "INFO"]:
            return b"cluster_state:ok\r\n"
        assert args == ["CLUSTER", "NODES"]
        delay, text = self.answers[route.port]
        await asyncio.sleep(delay)
        return text.encode()


def a1_and_the_others(a1: tuple[float, str], others: tuple[float, str]) -> NodeAnswers:
    """a1 (port 7000) answers one view after its delay; a2, a3 and b1 another."""
    return NodeAnswers({7000: a1, **dict.fromkeys((7001, 7002, 7003), others)})


def owner_of(cluster: ClusterTier, key: str) -> str | None:
    owner = cluster.node_for(key)
    return owner.address if owner else None


class Renewals:
    """Stands in for ClusterTier._create_client: records each new client's seeds, and
    which node the slot of ``key`` was routed to while it was created."""

    def __init__(self, cluster: ClusterTier, answers: NodeAnswers, key: str) -> None:
        self.cluster, self.answers, self.key = cluster, answers, key
        self.seeds: list[list[tuple[str, int]]] = []
        self.routed_meanwhile: list[str | None] = []

    async def __call__(self, seeds: list[tuple[str, int]] | None = None) -> NodeAnswers:
        self.seeds.append(list(seeds or []))
        await asyncio.sleep(0.01)  # glide's create yields to the event loop
        self.routed_meanwhile.append(owner_of(self.cluster, self.key))
        return self.answers


async def test_the_freshest_view_wins_over_a_resumed_master_answering_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = tier()
    answers = NodeAnswers(
        {
            7000: (0.0, RESUMED),
            7001: (0.02, PROMOTED),
            7002: (0.02, PROMOTED),
            7003: (0.03, PROMOTED),
        }
    )
    cluster._client = answers  # type: ignore[assignment]
    renewals = Renewals(cluster, answers, "pitchey:a")
    monkeypatch.setattr(cluster, "_create_client", renewals)
    assert await cluster._refresh_topology() == "127.0.0.1:7001"
    owners = {node.address for node in cluster.key_nodes}
    assert owners == {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
    # The glide client is renewed on the cluster's view: the deposed master is no seed.
    assert len(renewals.seeds) == 1
    assert ("127.0.0.1", 7000) not in renewals.seeds[0]
    assert ("127.0.0.1", 7003) in renewals.seeds[0]


async def test_a_promoted_masters_slots_reach_only_the_renewed_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The old client still routes a1's slots to a1. Resumed from a freeze, a1 acked
    # writes its resync then lost: the shard drill read the value before them.
    cluster = tier()
    key = "pitchey:a"
    assert owner_of(cluster, key) == "127.0.0.1:7000"
    for node in cluster.nodes:
        node.healthy = node.address != "127.0.0.1:7000"  # frozen: its heartbeat failed
    answers = NodeAnswers(dict.fromkeys((7000, 7001, 7002, 7003), (0.0, PROMOTED)))
    cluster._client = answers  # type: ignore[assignment]
    renewals = Renewals(cluster, answers, key)
    monkeypatch.setattr(cluster, "_create_client", renewals)
    await cluster._refresh_topology()
    # While the client was renewed, the slot still went to the frozen a1 (elsewhere);
    # only the renewed client sees it routed to b1.
    assert renewals.routed_meanwhile == ["127.0.0.1:7000"]
    assert owner_of(cluster, key) == "127.0.0.1:7003"


async def test_a_node_that_never_answers_delays_the_topology_by_the_grace_only() -> None:
    cluster = tier()
    cluster._client = a1_and_the_others((3600.0, TOPOLOGY), (0.0, TOPOLOGY))  # type: ignore[assignment]
    started = time.perf_counter()
    assert await cluster._refresh_topology() == "127.0.0.1:7001"
    assert time.perf_counter() - started < TOPOLOGY_GRACE_S + 0.5


# a1 resumed from a freeze after the cluster agreed it failed, before its replica's
# promotion: its own view flags nothing (a node never flags itself), the others'
# flag it fail while it still owns its slots.
FLAGGED = TOPOLOGY.replace("myself,master - 0 0 1", "master,fail - 0 0 1").replace(
    "a2 127.0.0.1:7001@17001 master", "a2 127.0.0.1:7001@17001 myself,master"
)


async def test_a_master_the_cluster_flagged_failed_is_down_though_it_answers() -> None:
    # The writes it took then were lost when it turned replica (shard drill, 3 s freeze).
    cluster = tier()
    cluster._client = a1_and_the_others((0.0, TOPOLOGY), (0.01, FLAGGED))  # type: ignore[assignment]
    answers = await cluster.ping()
    assert "flagged it failed" in (answers["127.0.0.1:7000"] or "")
    assert answers["127.0.0.1:7001"] is None
    assert answers["127.0.0.1:7002"] is None
    # Its slots stay its own until the promotion: they are served elsewhere meanwhile.
    assert owner_of(cluster, "pitchey:a") == "127.0.0.1:7000"
