"""Which hash slots a cluster tier serves, from a topology read (no server needed)."""

from __future__ import annotations

from pitchey_cache.config import NodeAddress, Settings
from pitchey_cache.redis_text import parse_cluster_nodes
from pitchey_cache.tiers.cluster import ClusterTier

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
