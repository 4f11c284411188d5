"""The contract every tier implements, and the per-node health it reports.

A tier is a thin adapter over one backend. It takes full keys (the prefix is
already applied) and encoded values, and knows nothing of failover: the
router decides what to do when a call fails. A tier raises only
:mod:`pitchey_cache.errors`: driver exceptions are mapped at the tier's own
edge (the glide tiers' ``_call``, the Upstash tier's ``_command``), through
:meth:`Tier.translate`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import ClassVar, TypeVar

from pitchey_cache.errors import CacheError, TierUnavailable
from pitchey_cache.tiers.link import NodeLink


@dataclass(slots=True)
class NodeHealth:
    """One server of a tier, as the health checker and failed calls saw it.

    ``failure_count`` is the number of consecutive failures (calls and
    probes) since the last success. A node is unhealthy after a failed probe,
    or after ``max_failures`` consecutive failed calls; any success makes it
    healthy again. Calls whose keys live on an unhealthy node skip the tier.
    """

    address: str
    role: str = "master"
    healthy: bool = True
    failure_count: int = 0
    last_health_check: datetime | None = None
    last_error: str | None = None
    slots: tuple[tuple[int, int], ...] = ()
    # What the node's heartbeat says: the reason while it fails (None while it answers
    # or has none), and how many PINGs it answered in a row since it last failed.
    heartbeat_error: str | None = None
    heartbeat_answers: int = 0
    # Calls on this node's keys that another tier served (skipped here, or failed here).
    served_elsewhere: int = 0

    def record_success(self) -> None:
        self.failure_count = 0
        self.healthy = True
        self.last_error = None

    def record_failure(self, reason: str, max_failures: int) -> None:
        self.failure_count += 1
        # A failing heartbeat knows better than a call why (a call may only have timed out).
        self.last_error = self.heartbeat_error or reason
        if self.failure_count >= max_failures:
            self.healthy = False

    def record_probe(self, at: datetime, error: str | None) -> None:
        self.last_health_check = at
        if error is None:
            self.record_success()
        else:
            self.failure_count += 1
            self.last_error = error
            self.healthy = False


class TierCondition(StrEnum):
    """How much of a tier can serve: all of it, all keys with some node down, or nothing."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    # Some keys' nodes are down: those calls skip the tier, the rest are served.
    PARTIAL = "partial"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """Connections a tier holds right now, as the guide's connectionPool block.

    ``active`` is None where the driver cannot tell which connection a
    request in flight uses.
    """

    total: int
    active: int | None

    @property
    def idle(self) -> int | None:
        return None if self.active is None else self.total - self.active


class Tier(abc.ABC):
    """One backend in the chain. Subclasses implement the data calls and ``ping``."""

    name: ClassVar[str]
    distributed: ClassVar[bool]

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        """The servers behind this tier; empty for the in-memory tier."""
        return ()

    @property
    def key_nodes(self) -> Sequence[NodeHealth]:
        """The nodes that serve keys (a cluster's replicas don't); their health decides calls."""
        return self.nodes

    def node_for(self, key: str) -> NodeHealth | None:  # noqa: ARG002 - one node takes all
        """The node that serves ``key``, charged when a call on it fails."""
        nodes = self.nodes
        return nodes[0] if nodes else None

    def serves(self, keys: Sequence[str]) -> bool:
        """Whether every node serving ``keys`` is healthy; with no keys, whether any node is.

        Calls skip a tier that doesn't serve their keys, so they stop paying
        timeouts on a node known to be down.
        """
        if all(node.healthy for node in self.key_nodes):
            return True
        if not keys:
            return self.condition() is not TierCondition.DOWN
        for key in keys:
            node = self.node_for(key)
            if node is not None and not node.healthy:
                return False
        return True

    def condition(self) -> TierCondition:
        nodes = self.nodes
        healthy = sum(1 for node in nodes if node.healthy)
        if healthy == len(nodes):
            return TierCondition.HEALTHY
        return TierCondition.DEGRADED if healthy else TierCondition.DOWN

    def connection_pool(self) -> PoolFigures:
        return PoolFigures(total=0, active=0)

    @property
    def known_empty(self) -> bool:
        """True only when the tier certainly holds no key (then nothing to invalidate)."""
        return False

    def pool_connections(self, node: NodeHealth) -> int:  # noqa: ARG002 - one node has them all
        """Connections of the pool that reach ``node``."""
        return self.connection_pool().total

    def describe(self) -> str:
        """Where this tier points, without secrets: ``native-redis localhost:6379/0``."""
        return self.name

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare clients without blocking on the network; failures surface on use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every connection."""

    def translate(self, exc: Exception) -> CacheError:
        """Map a driver exception to :class:`TierUnavailable` or a caller's error."""
        return TierUnavailable(self.name, f"{type(exc).__name__}: {exc}")

    @property
    def request_deadline(self) -> float:
        """Seconds after a request was sent during which the tier may still carry it out.

        A write that failed or was abandoned with its outcome unknown can land that
        late: the driver retries it (glide does, through CLUSTERDOWN), or it waits in
        a socket. Its key is not read or written here again before then.
        """
        return 0.0

    def unserved_slots(self) -> tuple[tuple[int, int], ...]:
        """A cluster's hash slot ranges with no healthy master: their keys go elsewhere."""
        return ()

    @property
    def has_links(self) -> bool:
        """Whether :meth:`open_link` works: the Redis tiers get per-node heartbeats."""
        return False

    async def open_link(self, address: str, within: float) -> NodeLink:
        """A connection of its own to the node at ``address`` (raises ``LinkError``)."""
        raise NotImplementedError(f"{self.name} has no per-node links")

    @abc.abstractmethod
    async def ping(self, skip: Collection[str] = frozenset()) -> Mapping[str, str | None]:
        """Probe every node: address -> None when it answered, else what went wrong.

        Nodes whose address is in ``skip`` are not asked (their heartbeat already
        says they fail) and are left out of the answer. Raises ``TierUnavailable``
        when the tier cannot be reached at all. Never swallows errors.
        """

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def get_batch(self, keys: Sequence[str]) -> list[bytes | None]:
        """A coalesced batch's multi-key read: :meth:`get_many`, unless the tier
        would rather its keys be read one by one; it then raises ``TierUnavailable``
        blaming no node, and the coalescer sends one GET per key."""
        return await self.get_many(keys)

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: int, only_if_absent: bool) -> bool:
        """Store ``value`` for ``ttl`` seconds; False when ``only_if_absent`` and present."""

    @abc.abstractmethod
    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None: ...

    @abc.abstractmethod
    async def delete(self, keys: Sequence[str]) -> int: ...

    @abc.abstractmethod
    async def exists(self, keys: Sequence[str]) -> int: ...

    @abc.abstractmethod
    async def expire(self, key: str, ttl: int) -> bool: ...

    @abc.abstractmethod
    async def ttl(self, key: str) -> int:
        """Seconds left; -1 for a key without expiry, -2 for a missing key."""

    @abc.abstractmethod
    async def incr(self, key: str, amount: int) -> int:
        """Add ``amount`` atomically; a missing key counts from 0; expiry is kept."""

    @abc.abstractmethod
    async def delete_matching(self, pattern: str) -> int:
        """Delete keys matching a Redis glob ``pattern``, by SCAN, never KEYS."""

    # -- a loader's lock: SET NX PX with a random token, released only by its owner

    @abc.abstractmethod
    async def acquire_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        """Store ``token`` at ``key`` for ``ttl_ms`` milliseconds unless ``key`` exists;
        whether it was stored (the caller now holds the lock)."""

    @abc.abstractmethod
    async def release_lock(self, key: str, token: str) -> bool:
        """Delete ``key`` only if it still holds ``token``, atomically; whether it did."""


Key = TypeVar("Key")


async def delete_by_scan(
    scan: Callable[[str], Awaitable[tuple[str, list[Key]]]],
    unlink: Callable[[list[Key]], Awaitable[int]],
) -> int:
    """SCAN from cursor ``"0"`` until the server returns ``"0"`` again, UNLINKing each
    batch as it comes; the number of keys deleted.

    ``scan(cursor)`` runs one SCAN step and returns the next cursor and the keys found.
    Keys are deleted batch by batch, never gathered first: a pattern may match millions.
    """
    deleted = 0
    cursor = "0"
    while True:
        cursor, keys = await scan(cursor)
        if keys:
            deleted += await unlink(keys)
        if cursor == "0":
            return deleted
