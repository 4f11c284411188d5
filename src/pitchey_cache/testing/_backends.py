"""Real backends on free loopback ports, the settings that reach them, and the faults
that break them: the engine of :mod:`pitchey_cache.testing`.

The servers themselves are the development tools' (:mod:`pitchey_cache.devtools`):
each is a process or thread this process started, signalled by its PID, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pitchey_cache.config import NodeAddress, Secret, Settings
from pitchey_cache.devtools.local_cluster import LocalCluster, NodeStatus, free_port_block
from pitchey_cache.devtools.local_redis import LOOPBACK, RedisServer
from pitchey_cache.testing._http import AppServer, Exchange, Fault, GatewayTap

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from pitchey_cache.cache import Cache

# Timings under which a test sees an outage within about a second: a call pays at
# most one 300 ms attempt before the next tier serves it, two failures mark a node
# down, and the health check finds it back within 250 ms of its return. Production
# defaults (seconds, not milliseconds) would make every outage test slow.
FAILOVER_TIMINGS: Final[Mapping[str, int]] = {
    "command_timeout_ms": 300,
    "connect_timeout_ms": 300,
    "max_failures": 2,
    "failover_timeout_ms": 500,
    "health_check_interval_ms": 250,
    "max_retries": 0,
    "retry_delay_ms": 50,
}
# A dead or frozen Redis costs the gateway at most this (plus the connect timeout)
# before it answers 503, so gateway outage tests finish fast too.
GATEWAY_REDIS_TIMEOUT_MS: Final = 400


def _settings(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
    return Settings(**{**FAILOVER_TIMINGS, **base, **overrides})


def _cache(settings: Settings) -> Cache:
    from pitchey_cache.cache import Cache  # noqa: PLC0415 - the driver loads on use

    return Cache(settings)


async def wait_for_tier(cache: Cache, tier: str, *, within: float = 10.0) -> None:
    """Return once ``cache`` serves from ``tier`` (``native-redis``, ``in-memory``, ...);
    raise AssertionError naming the tier it still serves from after ``within`` seconds.

    The cache's own health check moves it: no call is needed to bring it back.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while cache.active_tier != tier:
        if loop.time() > deadline:
            raise AssertionError(
                f"the cache still serves from {cache.active_tier} after {within:g}s, "
                f"expected {tier}"
            )
        await asyncio.sleep(0.02)


class LocalRedis:
    """A real redis-server on a free loopback port, and the faults to inject into it.

    ``settings()`` reaches it (then the in-memory tier) with :data:`FAILOVER_TIMINGS`;
    ``cache()`` is a :class:`~pitchey_cache.Cache` over it, to use as ``async with``.
    """

    def __init__(self, server: RedisServer, password: str | None = None) -> None:
        self.server = server
        self._password = password

    def __repr__(self) -> str:
        return f"<LocalRedis {self.server!r}>"

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return self.server.address

    def settings(self, **overrides: Any) -> Settings:
        """Settings for the native-redis tier on this server; ``overrides`` win."""
        base: dict[str, Any] = {"redis_host": self.host, "redis_port": self.port}
        if self._password is not None:
            base["redis_password"] = Secret(self._password)
        return _settings(base, overrides)

    def environ(self) -> dict[str, str]:
        """The environment variables that reach this server, for a subprocess
        (``pitchey-cache serve``, your own service) under test."""
        env = {"REDIS_HOST": self.host, "REDIS_PORT": str(self.port)}
        if self._password is not None:
            env["REDIS_PASSWORD"] = self._password
        return env

    def cache(self, **overrides: Any) -> Cache:
        """A cache over this server (not started: ``async with redis.cache() as cache``)."""
        return _cache(self.settings(**overrides))

    # -- faults ---------------------------------------------------------------

    def kill(self) -> None:
        """``kill -9`` the server: connections drop, new ones are refused."""
        self.server.kill()

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered (timeouts)."""
        self.server.pause()

    def thaw(self) -> None:
        """SIGCONT a frozen server: it answers what it was asked meanwhile."""
        self.server.resume()

    def restart(self) -> None:
        """Start the server again on the same port (empty: it keeps no data)."""
        self.server.restart()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Killed for the ``with`` block, started again after it."""
        self.kill()
        try:
            yield
        finally:
            self.restart()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Frozen for the ``with`` block, thawed after it."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()


class LocalRedisCluster:
    """A real Redis Cluster of redis-server processes on free loopback ports.

    Nodes are named by port (``ports``, ``masters()``); ``master_of(key)`` is the node
    that owns a cache key, the one to kill to make that key's shard fail over.
    """

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def __repr__(self) -> str:
        return f"<LocalRedisCluster {self.cluster!r}>"

    @property
    def ports(self) -> list[int]:
        return list(self.cluster.ports)

    @property
    def seeds(self) -> tuple[NodeAddress, ...]:
        return tuple(NodeAddress(LOOPBACK, port) for port in self.cluster.ports)

    def settings(self, **overrides: Any) -> Settings:
        """Settings for the redis-cluster tier on every node; ``overrides`` win."""
        return _settings({"cluster_enabled": True, "cluster_nodes": self.seeds}, overrides)

    def environ(self) -> dict[str, str]:
        """The environment variables that reach this cluster, for a subprocess."""
        return {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": self.cluster.seeds}

    def cache(self, **overrides: Any) -> Cache:
        """A cache over this cluster (not started: use it as ``async with``)."""
        return _cache(self.settings(**overrides))

    def nodes(self) -> list[NodeStatus]:
        """Each node's process state, role and slots, as a live node sees them."""
        return self.cluster.nodes()

    def masters(self) -> list[int]:
        """The ports of the masters that own slots now (a failover changes them)."""
        return sorted(n.port for n in self.cluster.nodes() if n.role == "master" and n.slots)

    def master_of(self, key: str, *, prefix: str = "pitchey") -> int:
        """The port of the master that owns the cache key ``key`` (``prefix:`` added,
        as the cache adds REDIS_KEY_PREFIX)."""
        from pitchey_cache.tiers.cluster import key_slot  # noqa: PLC0415

        slot = key_slot(f"{prefix}:{key}" if prefix else key)
        for node in self.cluster.nodes():
            if node.role == "master" and any(a <= slot <= b for a, b in node.slots):
                return node.port
        raise AssertionError(f"no live master owns slot {slot} of {key!r}")

    def wait_ok(self, within: float = 30.0) -> None:
        """Wait until every running node agrees the cluster is whole again."""
        self.cluster.wait_ok(within)

    # -- faults, by node port ----------------------------------------------------

    def kill(self, port: int) -> None:
        """``kill -9`` one node; its replica takes over after the node timeout."""
        self.cluster.kill(port)

    def freeze(self, port: int) -> None:
        """SIGSTOP one node."""
        self.cluster.pause(port)

    def thaw(self, port: int) -> None:
        """SIGCONT a frozen node."""
        self.cluster.resume(port)

    def restart(self, port: int) -> None:
        """Start one node again; it rejoins (as a replica if it was failed over)."""
        self.cluster.restart(port)

    @contextlib.contextmanager
    def down(self, port: int) -> Iterator[None]:
        """One node killed for the ``with`` block, started again after it."""
        self.kill(port)
        try:
            yield
        finally:
            self.restart(port)

    @contextlib.contextmanager
    def frozen(self, port: int) -> Iterator[None]:
        """One node frozen for the ``with`` block, thawed after it."""
        self.freeze(port)
        try:
            yield
        finally:
            self.thaw(port)


class LocalUpstash:
    """Upstash's REST API on a free loopback port (the development gateway) in front of
    a real redis-server, behind a tap that records every request and can answer 500
    (:meth:`fail`) or hang (:meth:`hang`) instead.

    ``redis`` is the server behind it, to kill or freeze in turn.
    """

    def __init__(self, redis: LocalRedis, *, token: str | None = None) -> None:
        self.redis = redis
        self.token = token or secrets.token_urlsafe(24)
        self.tap = GatewayTap(self._gateway_app())
        self.http = AppServer(self.tap)

    def __repr__(self) -> str:
        return f"<LocalUpstash {self.url} fault={self.tap.fault} in front of {self.redis.address}>"

    @property
    def url(self) -> str:
        return self.http.url

    def settings(self, **overrides: Any) -> Settings:
        """Settings for the upstash-redis tier through this gateway; ``overrides`` win."""
        return _settings({"upstash_url": self.url, "upstash_token": Secret(self.token)}, overrides)

    def environ(self) -> dict[str, str]:
        """The environment variables that reach this gateway, for a subprocess."""
        return {"UPSTASH_REDIS_REST_URL": self.url, "UPSTASH_REDIS_REST_TOKEN": self.token}

    def cache(self, **overrides: Any) -> Cache:
        """A cache over this gateway (not started: use it as ``async with``)."""
        return _cache(self.settings(**overrides))

    def requests(self) -> list[Exchange]:
        """Every request the gateway was sent so far, with the status it answered."""
        return self.tap.requests()

    def start(self) -> None:
        self.http.start()

    def stop(self) -> None:
        """Stop listening: new connections are refused (an unreachable endpoint)."""
        self.http.stop()
        # A gateway app serves one run: its lifespan closed its Redis client.
        self.tap.app = self._gateway_app()

    # -- faults -----------------------------------------------------------------

    def fail(self) -> None:
        """Answer every request with 500 until :meth:`heal`."""
        self.tap.fault = Fault.ERROR_500

    def hang(self) -> None:
        """Hold every request unanswered until :meth:`heal` (then it runs late)."""
        self.tap.fault = Fault.HANG

    def heal(self) -> None:
        """Pass requests through again."""
        self.tap.fault = Fault.NONE

    @contextlib.contextmanager
    def failing(self) -> Iterator[None]:
        """Answering 500 for the ``with`` block, healed after it."""
        self.fail()
        try:
            yield
        finally:
            self.heal()

    @contextlib.contextmanager
    def hanging(self) -> Iterator[None]:
        """Holding every request for the ``with`` block; they run late after it."""
        self.hang()
        try:
            yield
        finally:
            self.heal()

    def _gateway_app(self) -> ASGIApp:
        return upstash_gateway_app(self.redis.address, self.token)


def upstash_gateway_app(redis_address: str, token: str) -> ASGIApp:
    """A fresh gateway app in front of the Redis at ``redis_address``, with short Redis
    timeouts. An app serves one uvicorn run: its lifespan closes its Redis client."""
    # The gateway brings the web framework and the Redis driver: loaded on use.
    from pitchey_cache.devtools.upstash_gateway import create_gateway_app  # noqa: PLC0415

    return create_gateway_app(
        f"redis://{redis_address}",
        token,
        command_timeout_ms=GATEWAY_REDIS_TIMEOUT_MS,
        connect_timeout_ms=GATEWAY_REDIS_TIMEOUT_MS,
    )


@contextlib.contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="pitchey-cache-") as scratch:
        yield Path(scratch)


@contextlib.contextmanager
def local_redis(
    *,
    workdir: Path | None = None,
    password: str | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[LocalRedis]:
    """A redis-server on a free loopback port for the ``with`` block, then stopped.

    Its data and log go to ``workdir`` (default: a temporary directory, removed after).
    ``extra_args`` are redis-server options (``["--appendonly", "yes"]`` keeps data
    across :meth:`LocalRedis.kill` and :meth:`LocalRedis.restart`).
    """
    with (
        _workdir(workdir) as directory,
        RedisServer(workdir=directory, password=password, extra_args=extra_args) as server,
    ):
        yield LocalRedis(server, password)


@contextlib.contextmanager
def local_cluster(
    *,
    workdir: Path | None = None,
    masters: int = 3,
    replicas: int = 1,
    node_timeout_ms: int = 1000,
    persistence: bool = False,
) -> Iterator[LocalRedisCluster]:
    """A Redis Cluster on free loopback ports for the ``with`` block, then stopped.

    ``masters`` x (1 + ``replicas``) nodes; a replica takes over a killed master after
    ``node_timeout_ms`` (short here, so failover tests are quick). Starting one takes a
    few seconds: share it between tests that leave it whole.
    """
    with _workdir(workdir) as directory:
        cluster = LocalCluster(
            workdir=directory,
            masters=masters,
            replicas=replicas,
            base_port=free_port_block(masters * (1 + replicas)),
            node_timeout_ms=node_timeout_ms,
            persistence=persistence,
        )
        with cluster:
            yield LocalRedisCluster(cluster)


@contextlib.contextmanager
def local_upstash(
    *, workdir: Path | None = None, token: str | None = None
) -> Iterator[LocalUpstash]:
    """Upstash's REST API on a free loopback port, in front of its own redis-server,
    for the ``with`` block."""
    with local_redis(workdir=workdir) as redis:
        gateway = LocalUpstash(redis, token=token)
        with gateway.http:
            yield gateway
