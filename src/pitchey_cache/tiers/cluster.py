"""The redis-cluster tier: a Redis Cluster through valkey-glide's GlideClusterClient."""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import glide

from pitchey_cache.clock import Clock
from pitchey_cache.config import Settings
from pitchey_cache.errors import TierUnavailable
from pitchey_cache.tiers.base import NodeHealth, PoolFigures, TierCondition
from pitchey_cache.tiers.glide_base import SCAN_BATCH, GlideTier

SLOTS = 16384


def key_slot(key: str) -> int:
    """The hash slot of ``key``, honouring a non-empty ``{hashtag}`` as Redis does."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


@dataclass(frozen=True, slots=True)
class TopologyNode:
    """One line of CLUSTER NODES."""

    node_id: str
    address: str
    role: str  # "master" | "replica"
    master_id: str | None
    flagged_fail: bool
    slots: tuple[tuple[int, int], ...]


def parse_cluster_nodes(text: str) -> list[TopologyNode]:
    """Parse a CLUSTER NODES reply; slots being imported or migrated are ignored."""
    nodes: list[TopologyNode] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:  # noqa: PLR2004 - the fixed fields of a CLUSTER NODES line
            continue
        node_id, address_field, flags_field, master = fields[:4]
        flags = set(flags_field.split(","))
        if "noaddr" in flags or "handshake" in flags:
            continue
        address = address_field.split("@", 1)[0]
        slots: list[tuple[int, int]] = []
        for part in fields[8:]:
            if part.startswith("["):
                continue
            low, _, high = part.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            TopologyNode(
                node_id=node_id,
                address=address,
                role="master" if "master" in flags else "replica",
                master_id=None if master == "-" else master,
                flagged_fail="fail" in flags,
                slots=tuple(slots),
            )
        )
    return nodes


class ClusterTier(GlideTier[glide.GlideClusterClient]):
    """A Redis Cluster (``redis-cluster``), discovered from REDIS_CLUSTER_NODES seeds.

    Keys are routed by hash slot (glide follows MOVED and ASK itself, so
    neither counts as a failure). The health checker reads the topology
    with CLUSTER NODES and pings every node, masters and replicas, by
    address; a failed call is charged to the master that owns its key's
    slot, and calls on the slots of an unhealthy master skip this tier while
    the other slots are still served here.
    """

    name: ClassVar[str] = "redis-cluster"
    distributed: ClassVar[bool] = True

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        super().__init__(settings, clock=clock)
        self._seeds = settings.cluster_nodes
        # Until the first topology read, the seeds stand for the cluster.
        self._nodes: dict[str, NodeHealth] = {
            str(seed): NodeHealth(address=str(seed), role="seed") for seed in self._seeds
        }
        self._slot_owner: list[NodeHealth | None] = [None] * SLOTS
        # The masters that own slots, and whether every slot has one.
        self._masters: tuple[NodeHealth, ...] = ()
        self._covered = False
        # Nodes that answered the last ping: the client's connection to each is up.
        self._reached: set[str] = set()
        self.cluster_state: str | None = None

    def describe(self) -> str:
        return f"{self.name} seeds {','.join(str(s) for s in self._seeds)}"

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return tuple(self._nodes.values())

    def node_for(self, key: str) -> NodeHealth | None:
        return self._slot_owner[key_slot(key)]

    def connection_pool(self) -> PoolFigures:
        """One multiplexed connection per node that answered the last ping.

        Glide does not say which node's connection a request in flight is on,
        so active and idle connections are not known (None), rather than guessed.
        """
        return PoolFigures(total=len(self._reached), active=None)

    def pool_connections(self, node: NodeHealth) -> int:
        return 1 if node.address in self._reached else 0

    def condition(self) -> TierCondition:
        """Healthy: every node is. Degraded: a node failed but every slot's master answers.
        Partial: some slots have no healthy master (their keys skip this tier).
        Down: no slot is served.
        """
        owners = self._masters
        if not owners:
            return super().condition()
        healthy_owners = sum(1 for n in owners if n.healthy)
        if healthy_owners == 0:
            return TierCondition.DOWN
        if healthy_owners < len(owners) or not self._covered:
            return TierCondition.PARTIAL
        if all(node.healthy for node in self._nodes.values()):
            return TierCondition.HEALTHY
        return TierCondition.DEGRADED

    def slot_ranges(self, node: NodeHealth) -> tuple[tuple[int, int], ...]:
        return node.slots

    async def _create_client(self) -> glide.GlideClusterClient:
        s = self._settings
        credentials = None
        if s.cluster_password is not None:
            credentials = glide.ServerCredentials(
                password=s.cluster_password.reveal(), username=s.cluster_username
            )
        config = glide.GlideClusterClientConfiguration(
            [glide.NodeAddress(seed.host, seed.port) for seed in self._seeds],
            credentials=credentials,
            request_timeout=s.command_timeout_ms,
            lazy_connect=True,
            use_tls=s.tls_enabled,
            advanced_config=glide.AdvancedGlideClusterClientConfiguration(
                connection_timeout=s.connect_timeout_ms, tls_config=self._tls()
            ),
            reconnect_strategy=self._backoff(),
            client_name="pitchey-cache",
        )
        return await glide.GlideClusterClient.create(config)

    def _pipeline(self) -> glide.ClusterBatch:
        return glide.ClusterBatch(is_atomic=False)

    async def _exec(
        self, client: glide.GlideClusterClient, batch: glide.Batch | glide.ClusterBatch
    ) -> object:
        if not isinstance(batch, glide.ClusterBatch):
            raise TypeError("a cluster client runs cluster batches")
        return await client.exec(batch, raise_on_error=True)

    async def delete_matching(self, pattern: str) -> int:
        return await self._call(_scan_and_unlink(self.client, pattern))

    # -- topology and probes ---------------------------------------------------

    async def ping(self) -> Mapping[str, str | None]:
        """Read the topology, then PING every node, masters and replicas, by address."""
        client = self.client
        source = await self._refresh_topology()
        info = await self._call(client.custom_command(["CLUSTER", "INFO"], _route(source)))
        self.cluster_state = _info_field(_text(info), "cluster_state")

        async def ping_node(address: str) -> str | None:
            try:
                await client.custom_command(["PING"], _route(address))
            except glide.GlideError as exc:
                return str(self.translate(exc))
            return None

        addresses = list(self._nodes)
        results = await asyncio.gather(*(ping_node(a) for a in addresses))
        answers = dict(zip(addresses, results, strict=True))
        self._reached = {a for a, error in answers.items() if error is None}
        return answers

    async def _refresh_topology(self) -> str | None:
        """Ask every known node for CLUSTER NODES at once; apply the first answer.

        Asking one random node would let a dead one hide the whole cluster.
        Returns the address that answered (None: a random node, before the
        first topology is known).
        """
        client = self.client
        candidates: list[str | None] = [
            node.address for node in self._nodes.values() if node.role != "seed"
        ] or [None]

        async def ask(address: str | None) -> tuple[str | None, str]:
            reply = await self._call(client.custom_command(["CLUSTER", "NODES"], _route(address)))
            return address, _text(reply)

        asks = [asyncio.ensure_future(ask(a)) for a in candidates]
        errors: list[BaseException] = []
        try:
            for finished in asyncio.as_completed(asks):
                try:
                    address, reply = await finished
                except glide.GlideError as exc:
                    errors.append(exc)
                    continue
                self._apply_topology(parse_cluster_nodes(reply))
                return address
        finally:
            for task in asks:
                task.cancel()
        raise errors[0]

    def _apply_topology(self, topology: list[TopologyNode]) -> None:
        if not topology:
            raise TierUnavailable(self.name, "CLUSTER NODES listed no nodes")
        known = self._nodes
        nodes: dict[str, NodeHealth] = {}
        owners: list[NodeHealth | None] = [None] * SLOTS
        for entry in topology:
            node = known.get(entry.address) or NodeHealth(address=entry.address)
            node.role = entry.role
            node.slots = entry.slots if entry.role == "master" else ()
            nodes[entry.address] = node
            for low, high in node.slots:
                owners[low : high + 1] = [node] * (high - low + 1)
        self._nodes = nodes
        self._slot_owner = owners
        self._masters = tuple(n for n in nodes.values() if n.slots)
        self._covered = None not in owners


async def _scan_and_unlink(client: glide.GlideClusterClient, pattern: str) -> int:
    """Delete keys matching ``pattern`` on every master, by cluster SCAN."""
    deleted = 0
    cursor = glide.ClusterScanCursor()  # type: ignore[no-untyped-call]  # glide ships no annotation here
    while not cursor.is_finished():
        reply = await client.scan(cursor, match=pattern, count=SCAN_BATCH)
        next_cursor, keys = reply[0], reply[1]
        if not isinstance(next_cursor, glide.ClusterScanCursor) or not isinstance(keys, list):
            raise TierUnavailable(ClusterTier.name, "unexpected cluster SCAN reply")
        cursor = next_cursor
        if keys:
            batch: list[glide.TEncodable] = list(keys)
            deleted += await client.unlink(batch)
    return deleted


def _route(address: str | None) -> glide.Route:
    """A route to the node at ``host:port``, or to any node."""
    if address is None:
        return glide.RandomNode()
    host, _, port = address.rpartition(":")
    return glide.ByAddressRoute(host, int(port))


def _text(reply: object) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        return reply
    raise TierUnavailable(ClusterTier.name, f"unexpected reply type {type(reply).__name__}")


def _info_field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None
