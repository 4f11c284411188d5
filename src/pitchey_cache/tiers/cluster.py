"""The redis-cluster tier: a Redis Cluster through valkey-glide's GlideClusterClient."""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import re
from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar

import glide

from pitchey_cache.clock import Clock
from pitchey_cache.config import Settings
from pitchey_cache.errors import CacheError, TierUnavailable
from pitchey_cache.redis_text import TopologyNode, parse_cluster_nodes, parse_info, view_epoch
from pitchey_cache.tiers.base import NodeHealth, PoolFigures, TierCondition
from pitchey_cache.tiers.glide_base import SCAN_BATCH, GlideTier
from pitchey_cache.tiers.link import Credentials

SLOTS = 16384
# After the first CLUSTER NODES answer, how long the others may take to be compared
# with it (seconds): healthy nodes answer within milliseconds.
TOPOLOGY_GRACE_S = 0.1
# An MGET unanswered after this long, plus a little per key, is read again as one
# GET per key (see ClusterTier.get_many).
MGET_DEADLINE_S = 0.25
MGET_DEADLINE_PER_KEY_S = 0.00002
# set_many's SETs in flight at once, well under glide's 1000 requests per client.
SET_MANY_AT_ONCE = 100


def key_slot(key: str) -> int:
    """The hash slot of ``key``, honouring a non-empty ``{hashtag}`` as Redis does."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


class ClusterTier(GlideTier[glide.GlideClusterClient]):
    """A Redis Cluster (``redis-cluster``), discovered from REDIS_CLUSTER_NODES seeds.

    Keys are routed by hash slot (glide follows MOVED and ASK itself, so
    neither counts as a failure). The health checker reads the topology
    with CLUSTER NODES and pings every node, masters and replicas, by
    address; a failed call is charged to the master that owns its key's
    slot, and calls on the slots of an unhealthy master skip this tier while
    the other slots are still served here.

    ``get_many`` is glide's MGET, which it splits by slot, and ``set_many`` one SET
    per key; neither is a non-atomic ClusterBatch. With one master frozen, glide
    held a ClusterBatch of keys on the healthy masters: of GETs until the frozen
    master's requests timed out (2.9 s on a 3 s timeout), of SETs until it was
    given up. MGET was held too, so it has a deadline (see :meth:`get_many`).
    """

    name: ClassVar[str] = "redis-cluster"
    distributed: ClassVar[bool] = True
    cluster_member: ClassVar[bool] = True

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
        self._linked: dict[str, bool] = {}
        # Masters some node's view flags ``fail`` (the cluster agreed they failed).
        self._flagged: frozenset[str] = frozenset()
        # Slots being migrated, or redirected lately: a failure there blames no node.
        self._moving: frozenset[int] = frozenset()
        self._redirected: dict[int, float] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._old_clients: list[glide.GlideClusterClient] = []

    def describe(self) -> str:
        return f"{self.name} seeds {','.join(str(s) for s in self._seeds)}"

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return tuple(self._nodes.values())

    @property
    def key_nodes(self) -> Sequence[NodeHealth]:
        return self._masters or self.nodes

    def node_for(self, key: str) -> NodeHealth | None:
        slot = key_slot(key)
        if slot in self._moving or (
            self._redirected and self._redirected.get(slot, 0.0) > self._clock.monotonic()
        ):
            return None
        return self._slot_owner[slot]

    def translate(self, exc: Exception) -> CacheError:
        error = super().translate(exc)
        if isinstance(error, TierUnavailable) and not error.node_fault:
            # "... - Moved: 14604 127.0.0.1:7002": the slot is moving; for a while,
            # a failure on it (glide may time out chasing redirects) blames no node.
            match = re.search(r"(?:Moved|Ask): (\d+) ", error.reason)
            if match:
                until = self._clock.monotonic() + 2 * self._settings.failover_timeout_ms / 1000
                self._redirected[int(match.group(1))] = until
        return error

    def unserved_slots(self) -> tuple[tuple[int, int], ...]:
        if not self._masters or (self._covered and all(n.healthy for n in self._masters)):
            return ()
        ranges: list[tuple[int, int]] = []
        start: int | None = None
        for slot, owner in enumerate(self._slot_owner):
            unserved = owner is None or not owner.healthy
            if unserved and start is None:
                start = slot
            elif not unserved and start is not None:
                ranges.append((start, slot - 1))
                start = None
        if start is not None:
            ranges.append((start, SLOTS - 1))
        return tuple(ranges)

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

    def _credentials(self) -> Credentials:
        s = self._settings
        return Credentials(
            s.cluster_username,
            s.cluster_password,
            "REDIS_CLUSTER_USERNAME",
            "REDIS_CLUSTER_PASSWORD",
        )

    async def _create_client(
        self, seeds: Sequence[tuple[str, int]] | None = None
    ) -> glide.GlideClusterClient:
        s = self._settings
        credentials = None
        if s.cluster_password is not None:
            credentials = glide.ServerCredentials(
                password=s.cluster_password.reveal(), username=s.cluster_username
            )
        config = glide.GlideClusterClientConfiguration(
            [
                glide.NodeAddress(host, port)
                for host, port in seeds or [(seed.host, seed.port) for seed in self._seeds]
            ],
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

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET, which glide splits by slot; if it is not answered within
        ``MGET_DEADLINE_S`` (plus 20 us a key), one GET per key, all at once.

        With one master frozen, glide held MGETs of keys on the *healthy* masters
        until the heartbeat gave the frozen one up (0.75-1.0 s, at most freezes of
        the shard drill); GETs were never held. A GET of the frozen master's own
        key waits as its MGET would have, until the router gives it up.
        """
        found = await self._mget_within_deadline(keys)
        if found is not None:
            return found
        client = self.client
        return list(await self._call(asyncio.gather(*(client.get(key) for key in keys))))

    async def get_batch(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET as in :meth:`get_many`; past its deadline, the coalescer reads the keys
        one by one, each its own call: the healthy masters' readers are answered
        at once, and only the frozen master's wait for its heartbeat."""
        found = await self._mget_within_deadline(keys)
        if found is None:
            raise TierUnavailable(
                self.name, "an MGET held past its deadline: read key by key", node_fault=False
            )
        return found

    async def _mget_within_deadline(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """The MGET's answer, or None when it is not answered in time."""
        try:
            async with asyncio.timeout(MGET_DEADLINE_S + MGET_DEADLINE_PER_KEY_S * len(keys)):
                return await self._call(self.client.mget(list(keys)))
        except TimeoutError:
            return None

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        """One SET per key, ``SET_MANY_AT_ONCE`` at a time: glide held a non-atomic
        ClusterBatch of SETs on the healthy masters while another master froze, at
        every freeze of the shard drill, until the heartbeat gave the frozen one up
        (0.75-0.96 s). glide refuses requests past 1000 in flight per client."""
        client = self.client
        expiry = self._expiry(ttl)
        pending = list(items.items())
        for start in range(0, len(pending), SET_MANY_AT_ONCE):
            chunk = pending[start : start + SET_MANY_AT_ONCE]
            await self._call(
                asyncio.gather(*(client.set(key, value, expiry=expiry) for key, value in chunk))
            )

    async def delete_matching(self, pattern: str) -> int:
        step = 2 * max(self._settings.command_timeout_ms, self._settings.connect_timeout_ms) / 1000
        return await self._call(_scan_and_unlink(self.client, pattern, step))

    # -- topology and probes ---------------------------------------------------

    async def close(self) -> None:
        retired, self._retired = self._retired, set()
        for task in retired:
            task.cancel()
        await asyncio.gather(*retired, return_exceptions=True)
        old, self._old_clients = self._old_clients, []
        for client in old:
            with contextlib.suppress(glide.GlideError):
                await client.close()
        await super().close()

    async def _renew_client(self, topology: Sequence[TopologyNode]) -> None:
        """Replace the glide client with one seeded from ``topology``'s live nodes.

        After a failover glide keeps routing the old master's slots to it while it
        is frozen (SIGSTOP, a network black hole): only MOVED or a closed
        connection makes it re-read the slots, and a frozen node sends neither.
        """
        live = [e.address for e in topology if not e.flagged_fail]
        seeds = [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in live]
        old = self._client
        self._client = await self._create_client(seeds)
        if old is None:
            return
        self._old_clients.append(old)

        async def retire() -> None:
            # Requests in flight on the old client end within one command timeout.
            await asyncio.sleep(2 * self._settings.command_timeout_ms / 1000)
            self._old_clients.remove(old)
            with contextlib.suppress(glide.GlideError):
                await old.close()

        task = asyncio.create_task(retire())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def ping(self, skip: Collection[str] = frozenset()) -> Mapping[str, str | None]:
        """Read the topology, then ask every master, by address, whether it serves keys."""
        try:
            source = await self._refresh_topology()
        except TierUnavailable as error:
            await self._raise_tls_problem(error, self._seeds)
            raise
        client = self.client
        info = await self._call(client.custom_command(["CLUSTER", "INFO"], _route(source)))
        self.cluster_state = parse_info(_text(info)).get("cluster_state")

        async def ping_node(address: str) -> str | None:
            if self._nodes[address].role in {"replica", "failed"} or address in self._flagged:
                return self._judged_by_cluster(address)
            try:
                # Its own view: a node that says cluster_state:fail (just restarted, say)
                # answers PING but refuses every key with CLUSTERDOWN.
                reply = await client.custom_command(["CLUSTER", "INFO"], _route(address))
            except glide.GlideError as exc:
                return str(self.translate(exc))
            state = parse_info(_text(reply)).get("cluster_state")
            if state != "ok":
                return f"cluster_state is {state} here: it refuses keys (CLUSTERDOWN)"
            return None

        addresses = [a for a in self._nodes if a not in skip]
        results = await asyncio.gather(*(ping_node(a) for a in addresses))
        answers = dict(zip(addresses, results, strict=True))
        # Each master answered for itself: the node that read the topology may be the one
        # just restarted, whose "fail" says nothing of the others.
        self._reached = {a for a, error in answers.items() if error is None}
        return answers

    def _judged_by_cluster(self, address: str) -> str | None:
        """What the cluster's own view says of a replica, or of a master it failed."""
        role = self._nodes[address].role
        if role == "replica":
            # Glide routes only to the replicas CLUSTER SLOTS listed when it last
            # read it (Redis 7.0 leaves out one whose replication offset is still 0;
            # a rejoined node appears at glide's next refresh): a replica is judged
            # by the cluster's own view of it.
            if self._linked.get(address, False):
                return None
            return "the cluster reports its link down or the node failing"
        if role == "failed":
            return "the cluster marks it failed; a replica took over its slots"
        # Resumed from a freeze after the cluster agreed it failed, a master answers
        # and still serves its slots until its replica's promotion: the writes it
        # takes meanwhile are lost when it turns replica (the shard drill read the
        # value before them, with a 3 s freeze).
        return "the cluster flagged it failed: its replica may take over its slots"

    async def _refresh_topology(self) -> str | None:
        """Ask every known node for CLUSTER NODES at once; apply the freshest view.

        Asking one random node would let a dead one hide the whole cluster. The
        answers that come within ``TOPOLOGY_GRACE_S`` of the first are compared,
        and the view with the greatest config epoch wins (the first of equals): a
        master resumed after a freeze answers fast, and still claims the slots its
        replica took over; its view once replaced the cluster's, and the glide
        client was renewed on it. Returns the address whose view was applied
        (None: a random node, before the first topology is known).
        """
        client = self.client
        candidates: list[str | None] = [
            node.address for node in self._nodes.values() if node.role != "seed"
        ] or [None]

        async def ask(address: str | None) -> tuple[str | None, str]:
            reply = await self._call(client.custom_command(["CLUSTER", "NODES"], _route(address)))
            return address, _text(reply)

        asks: list[asyncio.Future[tuple[str | None, str]]] = [
            asyncio.ensure_future(ask(a)) for a in candidates
        ]
        errors: list[CacheError] = []
        views: list[tuple[str | None, list[TopologyNode]]] = []
        loop = asyncio.get_running_loop()
        try:
            pending: set[asyncio.Future[tuple[str | None, str]]] = set(asks)
            deadline: float | None = None
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                # In the order asked, so that equal views keep a stable winner.
                for task in (task for task in asks if task in done):
                    try:
                        address, reply = task.result()
                    except CacheError as error:
                        errors.append(error)
                        continue
                    views.append((address, parse_cluster_nodes(reply)))
                if views and deadline is None:
                    deadline = loop.time() + TOPOLOGY_GRACE_S
        finally:
            for task in asks:
                task.cancel()
        if not views:
            raise errors[0]
        address, topology = max(views, key=lambda view: view_epoch(view[1]))
        # A master does not flag itself: any view's fail flag counts.
        self._flagged = frozenset(
            e.address for _, view in views for e in view if e.flagged_fail and e.slots
        )
        if self._masters and {n.address for n in self._masters} - {
            e.address for e in topology if e.role == "master" and e.slots
        }:
            # A master lost its slots (a failover): renew the client *before* they are
            # routed here again. The old client still sends them to the deposed
            # master; resumed from a freeze, it acked writes that its resync as a
            # replica then lost, and later reads found the value before (shard drill).
            await self._renew_client(topology)
        self._apply_topology(topology)
        return address

    def _apply_topology(self, topology: list[TopologyNode]) -> None:
        if not topology:
            raise TierUnavailable(self.name, "CLUSTER NODES listed no nodes")
        known = self._nodes
        nodes: dict[str, NodeHealth] = {}
        owners: list[NodeHealth | None] = [None] * SLOTS
        for entry in topology:
            node = known.get(entry.address) or NodeHealth(address=entry.address)
            # A master the cluster marked failed, whose slots its replica took, is not
            # shown as a master.
            failed = entry.flagged_fail and not entry.slots
            node.role = "failed" if failed else entry.role
            node.slots = entry.slots if entry.role == "master" else ()
            nodes[entry.address] = node
            for low, high in node.slots:
                owners[low : high + 1] = [node] * (high - low + 1)
        masters = tuple(n for n in nodes.values() if n.slots)
        self._linked = {entry.address: entry.linked for entry in topology}
        self._moving = frozenset(slot for entry in topology for slot in entry.moving)
        self._nodes = nodes
        self._slot_owner = owners
        self._masters = masters
        self._covered = None not in owners


async def _scan_and_unlink(client: glide.GlideClusterClient, pattern: str, step: float) -> int:
    """Delete keys matching ``pattern`` on every master, by cluster SCAN.

    Each step is bounded by ``step`` seconds: with a master down, glide's
    cluster SCAN was seen never to return.
    """
    deleted = 0
    cursor = glide.ClusterScanCursor()  # type: ignore[no-untyped-call]  # glide ships no annotation here
    while not cursor.is_finished():
        try:
            async with asyncio.timeout(step):
                reply = await client.scan(cursor, match=pattern, count=SCAN_BATCH)
        except TimeoutError:
            raise TierUnavailable(
                ClusterTier.name, f"cluster SCAN step took over {step:g}s"
            ) from None
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
