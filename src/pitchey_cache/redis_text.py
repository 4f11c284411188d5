"""Redis' text replies, read once for the cluster tier and the development tools:
``INFO`` / ``CLUSTER INFO`` and ``CLUSTER NODES`` (the same lines as a ``nodes.conf``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <epoch> <link>
_FIXED_FIELDS: Final = 8


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` or ``CLUSTER INFO`` as ``{field: value}``; section headers are skipped."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value.strip()
    return fields


@dataclass(frozen=True, slots=True)
class TopologyNode:
    """One node of a ``CLUSTER NODES`` reply."""

    node_id: str
    address: str  # host:port, without the cluster bus port
    flags: frozenset[str]
    master_id: str | None  # the master a replica follows
    slots: tuple[tuple[int, int], ...]
    # Slots this node is migrating away or importing ("[slot->-id]", "[slot-<-id]").
    moving: tuple[int, ...] = ()
    link_state: str = "connected"
    # The epoch of the configuration this node's slots come from: of two nodes
    # claiming a slot, the one with the greater epoch owns it (Redis Cluster's rule).
    config_epoch: int = 0

    @property
    def role(self) -> str:
        """``master`` or ``replica``."""
        return "master" if "master" in self.flags else "replica"

    @property
    def flagged_fail(self) -> bool:
        """Failed by the cluster's agreement (``fail``), not only suspected (``fail?``)."""
        return "fail" in self.flags

    @property
    def failing(self) -> bool:
        """Flagged ``fail`` or ``fail?`` by the node that answered."""
        return bool(self.flags & {"fail", "fail?"})

    @property
    def linked(self) -> bool:
        """Not failing, and its cluster bus link connected."""
        return not self.failing and self.link_state == "connected"

    @property
    def port(self) -> int | None:
        port = self.address.rpartition(":")[2]
        return int(port) if port.isdigit() else None


def parse_cluster_nodes(text: str) -> list[TopologyNode]:
    """The nodes of a ``CLUSTER NODES`` reply (or ``nodes.conf``) that have an address
    and finished the handshake. Slots being imported or migrated are listed apart
    (``moving``), not as owned."""
    nodes: list[TopologyNode] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < _FIXED_FIELDS:
            continue
        node_id, address_field, flags_field, master = fields[:4]
        flags = frozenset(flags_field.split(","))
        if flags & {"noaddr", "handshake"}:
            continue
        slots: list[tuple[int, int]] = []
        moving: list[int] = []
        for part in fields[_FIXED_FIELDS:]:
            if part.startswith("["):
                moving.append(int(part[1:].split("-", 1)[0]))
                continue
            low, _, high = part.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            TopologyNode(
                node_id=node_id,
                address=address_field.split("@", 1)[0],
                flags=flags,
                master_id=None if master == "-" else master,
                slots=tuple(sorted(slots)),
                moving=tuple(moving),
                link_state=fields[7],
                config_epoch=int(fields[6]) if fields[6].isdigit() else 0,
            )
        )
    return nodes


def view_epoch(topology: list[TopologyNode]) -> int:
    """The greatest config epoch among the slot owners of one node's ``CLUSTER NODES``:
    a node that has not yet heard of the latest failover (a master resumed after a
    freeze, still claiming the slots its replica took) answers a smaller one."""
    return max((node.config_epoch for node in topology if node.slots), default=0)
