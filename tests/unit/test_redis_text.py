"""The one reader of Redis' INFO and CLUSTER NODES text, shared by the cluster tier
and the local cluster tool, and the one way secrets are masked."""

from __future__ import annotations

from pitchey_cache.redaction import REDACTED, redact
from pitchey_cache.redis_text import parse_cluster_nodes, parse_info, view_epoch

# As Redis 7 prints it: a master with two slot ranges and a slot migrating away, its
# replica, a failed master, a node still in handshake, and one without an address.
CLUSTER_NODES = """\
07c3 127.0.0.1:7001@17001,host1 myself,master - 0 0 1 connected 0-5460 5462 [5461->-e1f2]
9a1b 127.0.0.1:7004@17004 slave 07c3 0 1700000000000 1 connected
e1f2 127.0.0.1:7002@17002 master,fail - 1700000000000 0 2 disconnected 10923-16383
5d5d 127.0.0.1:7009@17009 handshake - 0 0 0 connected
6e6e :0@0 master,noaddr - 0 0 3 disconnected
"""


def test_cluster_nodes_gives_roles_slots_and_links_of_addressed_nodes() -> None:
    nodes = {node.address: node for node in parse_cluster_nodes(CLUSTER_NODES)}

    assert list(nodes) == ["127.0.0.1:7001", "127.0.0.1:7004", "127.0.0.1:7002"]
    master, replica, failed = nodes.values()
    assert (master.role, master.slots, master.moving) == (
        "master",
        ((0, 5460), (5462, 5462)),
        (5461,),
    )
    assert master.port == 7001
    assert master.linked
    assert (replica.role, replica.master_id, replica.slots) == ("replica", "07c3", ())
    assert failed.flagged_fail
    assert failed.failing
    assert not failed.linked


def test_a_views_epoch_is_the_greatest_config_epoch_of_its_slot_owners() -> None:
    nodes = parse_cluster_nodes(CLUSTER_NODES)
    assert [node.config_epoch for node in nodes] == [1, 1, 2]
    assert view_epoch(nodes) == 2
    assert view_epoch(nodes[:2]) == 1
    assert view_epoch([]) == 0


def test_a_suspected_node_is_failing_but_not_flagged_failed() -> None:
    (node,) = parse_cluster_nodes("ab 127.0.0.1:7003@17003 master,fail? - 0 0 1 connected 1-2\n")

    assert node.failing
    assert not node.flagged_fail
    assert not node.linked


def test_a_nodes_conf_file_reads_the_same_and_its_vars_line_is_skipped() -> None:
    text = CLUSTER_NODES + "vars currentEpoch 3 lastVoteEpoch 0\n"

    assert parse_cluster_nodes(text) == parse_cluster_nodes(CLUSTER_NODES)


def test_info_reads_fields_and_skips_section_headers() -> None:
    text = (
        "# Cluster\r\ncluster_state:ok\r\ncluster_slots_ok:16384\r\n\r\n# Other\r\nrole:slave\r\n"
    )

    assert parse_info(text) == {
        "cluster_state": "ok",
        "cluster_slots_ok": "16384",
        "role": "slave",
    }


def test_redact_masks_every_secret_and_skips_missing_ones() -> None:
    text = "AUTH pw1 failed; token tok-2 refused; pw1 again"

    assert redact(text, "pw1", None, "", "tok-2") == (
        f"AUTH {REDACTED} failed; token {REDACTED} refused; {REDACTED} again"
    )
    assert redact(text) == text
