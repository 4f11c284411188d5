"""A Redis Cluster of real ``redis-server`` processes on loopback, for development and tests.

``LocalCluster`` starts ``masters x (1 + replicas)`` nodes on consecutive ports, joins
them with ``redis-cli --cluster create`` and waits until every node reports
``cluster_state:ok`` with all 16384 slots served and every replica's link up. Each node
is a :class:`~pitchey_cache.devtools.local_redis.RedisServer`, so processes are
signalled by PID, never by name, and outages are the honest kind (``kill -9``,
SIGSTOP).

``pitchey-cache local-cluster up | status | down | kill | stop | cont | restart`` drives
the same class from a shell. ``up`` leaves the servers running and records their ports,
PIDs and process start times in ``<dir>/local-cluster.json``; every later command
signals a PID only while it still is that redis-server on that port, so a PID the
kernel has since reused is never touched. ``up`` on a recorded cluster starts again
only the nodes that are gone, so one node that died comes back while the others run.

Every node runs with ``cluster-require-full-coverage no``: a cache would rather serve
the shards it has than none. With the default (``yes``), every node refuses every key
while one shard has no master; with ``no``, only that shard's keys fail (and go to the
next tier) until its replica is promoted.

Passwords travel through a 0600 config file (servers) and ``REDISCLI_AUTH`` (redis-cli),
never through a command line that ``ps`` shows, and never into a repr, an exception or
the state file.

With ``tls``, every node speaks TLS only, to clients, to its replicas
(``tls-replication yes``) and on the cluster bus (``tls-cluster yes``);
``local-cluster up --tls`` makes a throwaway CA and node certificate for that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pitchey_cache.devtools.local_redis import (
    LOOPBACK,
    LocalCertificateAuthority,
    RedisServer,
    ReplyReader,
    ServerTls,
    open_connection,
    resp_command,
)
from pitchey_cache.redaction import redact
from pitchey_cache.redis_text import parse_cluster_nodes, parse_info

TOTAL_SLOTS = 16384
# Redis listens for the cluster bus on the client port plus this offset unless
# `cluster-port` says otherwise; `--bus-port-offset` chooses another one.
BUS_PORT_OFFSET = 10000
MAX_PORT = 65535
DEFAULT_BASE_PORT = 7001
DEFAULT_NODE_TIMEOUT_MS = 5000
DEFAULT_DIR = Path(".pitchey-cache/local-cluster")
# Where `up --tls` keeps its CA and node certificate, under --dir unless --tls-dir says.
TLS_SUBDIR = "tls"
STATE_FILENAME = "local-cluster.json"
PASSWORD_VARIABLE = "REDIS_CLUSTER_PASSWORD"  # noqa: S105 - a variable name, not a secret
# redis-cli --cluster create refuses fewer masters than this.
MIN_MASTERS = 3

# The guide's backup advice: AOF for durability (at most a second of writes lost),
# plus RDB snapshots (redis 7's default rules) for compact backups to copy off-host.
PERSISTENCE_ARGS = (
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    "--save", "3600 1 300 100 60 10000",
)  # fmt: skip

_POLL_INTERVAL_SECONDS = 0.05
_QUERY_TIMEOUT_SECONDS = 1.0
_STOP_GRACE_SECONDS = 10.0
_STATE_VERSION = 1


NodeState = Literal["running", "paused", "down"]
Role = Literal["master", "replica"]


class LocalClusterError(RuntimeError):
    """The local cluster could not be started, formed, queried or stopped."""


@dataclass(frozen=True)
class NodeStatus:
    """One node as its process and a live node's ``CLUSTER NODES`` see it.

    ``role``, ``slots``, ``master_port``, ``failed`` and ``node_id`` are ``None``/empty
    when no live node could be asked.
    """

    port: int
    pid: int | None
    state: NodeState
    role: Role | None
    slots: tuple[tuple[int, int], ...]
    master_port: int | None  # the master a replica follows
    failed: bool  # flagged "fail" or "fail?" by the node that was asked
    node_id: str | None

    @property
    def alive(self) -> bool:
        return self.state != "down"

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)

    def describe_slots(self) -> str:
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.slots)


# ---------------------------------------------------------------------------
# Ports


def bus_port(port: int, offset: int = BUS_PORT_OFFSET) -> int:
    return port + offset


def busy_ports(ports: Iterable[int]) -> list[int]:
    """The ports among ``ports`` (client or bus) that something on 127.0.0.1 holds."""
    return [port for port in ports if not _port_is_free(port)]


def cluster_ports(base_port: int, count: int, bus_port_offset: int = BUS_PORT_OFFSET) -> list[int]:
    """``count`` consecutive client ports from ``base_port``, checked against the bus limit."""
    if count < 1:
        raise LocalClusterError(f"a cluster needs at least one node, not {count}")
    last = base_port + count - 1
    if abs(bus_port_offset) < count:
        raise LocalClusterError(
            f"bus port offset {bus_port_offset}: the bus ports of {count} nodes would "
            f"overlap their client ports {base_port}-{last}; use an offset of at least {count}"
        )
    first_bus, last_bus = bus_port(base_port, bus_port_offset), bus_port(last, bus_port_offset)
    if base_port < 1 or last > MAX_PORT or first_bus < 1 or last_bus > MAX_PORT:
        raise LocalClusterError(
            f"port {base_port}: nodes on {base_port}-{last} need cluster bus ports "
            f"{first_bus}-{last_bus}, which must be 1-{MAX_PORT}; choose a base port of "
            f"at most {MAX_PORT - max(bus_port_offset, 0) - count + 1}"
            + ("" if bus_port_offset == BUS_PORT_OFFSET else " or another bus port offset")
        )
    return list(range(base_port, last + 1))


def free_port_block(count: int, *, low: int = 10000, high: int = 22000, attempts: int = 200) -> int:
    """Return a base port such that ``count`` consecutive ports and their bus ports are free.

    The default window keeps client ports and bus ports (port + 10000) below Linux's
    ephemeral range (32768+), where an outgoing connection could take a port between
    this check and the server's bind.
    The start is random so that concurrent test runs rarely race for the same block.
    """
    span = high - low - count
    if span < 0 or bus_port(high) > MAX_PORT:
        raise LocalClusterError(f"no room for {count} nodes with bus ports in {low}-{high}")
    for _ in range(attempts):
        base = low + secrets.randbelow(span + 1)
        ports = range(base, base + count)
        if not busy_ports([*ports, *map(bus_port, ports)]):
            return base
    raise LocalClusterError(
        f"found no {count} consecutive free ports (with free bus ports) in {low}-{high} "
        f"after {attempts} tries"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # redis-server binds with SO_REUSEADDR too, so a port held only by connections
        # in TIME_WAIT (say, just after `down`) is free for it, and must be free here.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------
# Talking to a node


def _redis_cli_path() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        raise LocalClusterError(
            "redis-cli was not found on PATH. Install Debian's package `redis-tools` "
            "(as root: apt-get install -y redis-server redis-tools), or run `make redis`."
        )
    return path


def _query(
    port: int,
    password: str | None,
    *commands: Sequence[bytes],
    timeout: float = _QUERY_TIMEOUT_SECONDS,
    tls: ServerTls | None = None,
) -> list[bytes]:
    """Send commands to one node over a raw socket (TLS with ``tls``); one reply per command.

    Raises OSError when the node cannot be reached in time, LocalClusterError when it
    refuses our password.
    """
    payload = [resp_command(*command) for command in commands]
    if password is not None:
        payload.insert(0, resp_command(b"AUTH", password.encode()))
    with open_connection(LOOPBACK, port, timeout=timeout, tls=tls) as conn:
        conn.sendall(b"".join(payload))
        reader = ReplyReader(conn)
        replies = [reader.reply() for _ in payload]
    if password is not None:
        auth, *replies = replies
        if auth.startswith(b"-"):
            # The server's error text (WRONGPASS, or "no password is set") never echoes
            # the password itself.
            raise LocalClusterError(f"{LOOPBACK}:{port} refused AUTH: {auth[1:].decode()}")
    return replies


def _parse_info(text: bytes) -> dict[str, str]:
    return parse_info(text.decode(errors="replace"))


@dataclass(frozen=True)
class _ClusterEntry:
    node_id: str
    port: int
    role: Role | None
    master_id: str | None
    failed: bool
    slots: tuple[tuple[int, int], ...]


def _parse_cluster_nodes(text: bytes) -> dict[int, _ClusterEntry]:
    """``CLUSTER NODES`` (or a ``nodes.conf``) by node port."""
    entries: dict[int, _ClusterEntry] = {}
    for node in parse_cluster_nodes(text.decode(errors="replace")):
        if node.port is None:
            continue
        role: Role | None = (
            "master" if "master" in node.flags else "replica" if "slave" in node.flags else None
        )
        entries[node.port] = _ClusterEntry(
            node_id=node.node_id,
            port=node.port,
            role=role,
            master_id=node.master_id,
            failed=node.failing,
            slots=node.slots,
        )
    return entries


def _cluster_view(
    ports: Iterable[int], password: str | None, tls: ServerTls | None
) -> tuple[int, dict[int, _ClusterEntry]] | None:
    """``CLUSTER NODES`` from the first of ``ports`` that answers, with that port."""
    for port in ports:
        try:
            (reply,) = _query(port, password, [b"CLUSTER", b"NODES"], tls=tls)
        except OSError:
            continue
        if not reply.startswith(b"-"):
            return port, _parse_cluster_nodes(reply)
    return None


def _node_statuses(
    processes: Mapping[int, tuple[int | None, NodeState]],
    password: str | None,
    tls: ServerTls | None,
) -> list[NodeStatus]:
    """Combine each port's (pid, state) with the cluster view of a running node."""
    asked = [port for port, (_, state) in processes.items() if state == "running"]
    view = _cluster_view(asked, password, tls)
    entries = {} if view is None else view[1]
    port_by_id = {entry.node_id: entry.port for entry in entries.values()}
    statuses = []
    for port, (pid, state) in processes.items():
        entry = entries.get(port)
        statuses.append(
            NodeStatus(
                port=port,
                pid=pid,
                state=state,
                role=None if entry is None else entry.role,
                slots=() if entry is None else entry.slots,
                master_port=None
                if entry is None or entry.master_id is None
                else port_by_id.get(entry.master_id),
                failed=False if entry is None else entry.failed,
                node_id=None if entry is None else entry.node_id,
            )
        )
    return statuses


# ---------------------------------------------------------------------------
# The cluster


class _ClusterNodeServer(RedisServer):
    """A RedisServer whose secret config file also carries ``masterauth``.

    Replicas authenticate to their master with it, and a node that fails over or
    rejoins may become a replica at any time, so every node gets it. Keeping it in the
    same 0600 file as ``requirepass`` keeps it off the command line.
    """

    def _write_secret_config(self, password: str) -> Path:
        config = super()._write_secret_config(password)
        with config.open("a") as file:
            file.write(f'masterauth "{_hex_escaped(password)}"\n')
        return config


def _hex_escaped(text: str) -> str:
    # Hex escapes inside double quotes let any byte through redis' config parser.
    return "".join(f"\\x{byte:02x}" for byte in text.encode())


class LocalCluster:
    """A Redis Cluster of redis-server processes this process started on 127.0.0.1.

    Nodes listen on ``base_port`` onwards; the first ``masters`` ports get the slots
    and the rest replicate them (as ``redis-cli --cluster create`` assigns them). Each
    node keeps its ``nodes-PORT.conf``, log and data in ``workdir/PORT``, so a
    restarted node rejoins with its old identity, and a cluster whose nodes were all
    stopped can be started again from the same ``workdir`` (``start`` then resumes it
    rather than creating it anew). With ``tls``, nodes speak TLS only, also to each
    other, and every query here uses it.
    """

    host: str = LOOPBACK

    def __init__(
        self,
        *,
        workdir: Path,
        masters: int = 3,
        replicas: int = 1,
        base_port: int = DEFAULT_BASE_PORT,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        password: str | None = None,
        persistence: bool = False,
        tls: ServerTls | None = None,
        bus_port_offset: int = BUS_PORT_OFFSET,
    ) -> None:
        if masters < MIN_MASTERS:
            raise LocalClusterError(
                f"masters {masters}: redis-cli --cluster create needs at least {MIN_MASTERS}"
            )
        if replicas < 0:
            raise LocalClusterError(f"replicas {replicas}: must be 0 or more")
        if node_timeout_ms < 1:
            raise LocalClusterError(f"node timeout {node_timeout_ms} ms: must be positive")
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.persistence = persistence
        self.tls = tls
        self._password = password
        self.bus_port_offset = bus_port_offset
        self.ports = cluster_ports(base_port, masters * (1 + replicas), bus_port_offset)
        cluster_args = [
            "--cluster-enabled", "yes",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A cache would rather serve the shards it has than none: with the default
            # (yes), every node refuses every key while one shard has no master. With
            # no, only that shard's keys fail (and go to the next tier) until its
            # replica is promoted.
            "--cluster-require-full-coverage", "no",
            # A master otherwise waits 5 s for more replicas before a diskless full
            # sync; each has one or two, so waiting only delays every (re)join.
            "--repl-diskless-sync-delay", "0",
            *(PERSISTENCE_ARGS if persistence else ()),
            # The bus then speaks TLS too, and nodes announce TLS ports.
            *(("--tls-cluster", "yes") if tls is not None else ()),
        ]  # fmt: skip
        self._servers = {
            port: _ClusterNodeServer(
                port,
                workdir=workdir / str(port),
                password=password,
                extra_args=[
                    *cluster_args,
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-port",
                    str(self.bus_port(port)),
                ],
                tls=tls,
            )
            for port in self.ports
        }
        self._paused: set[int] = set()

    # -- addresses --------------------------------------------------------

    @property
    def seeds(self) -> str:
        """Every node's address, comma-separated: the REDIS_CLUSTER_NODES value."""
        return ",".join(self.address(port) for port in self.ports)

    def address(self, port: int) -> str:
        return f"{self.host}:{port}"

    def bus_port(self, port: int) -> int:
        """The cluster bus port of the node on ``port``."""
        return bus_port(port, self.bus_port_offset)

    @property
    def password_set(self) -> bool:
        return self._password is not None

    def pid(self, port: int) -> int | None:
        return self._server(port).pid

    def state(self, port: int) -> NodeState:
        """``running``, ``paused`` or ``down``: what this process did, no network asked."""
        if self._server(port).pid is None:
            return "down"
        return "paused" if port in self._paused else "running"

    def config_file(self, port: int) -> Path:
        """The node's ``nodes-PORT.conf``, which lets a restarted node rejoin."""
        return self.workdir / str(port) / f"nodes-{port}.conf"

    def logfile(self, port: int) -> Path:
        return self._server(port).logfile

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 60.0, progress: Callable[[str], None] | None = None) -> float:
        """Start every node, form (or resume) the cluster and wait until it is ok.

        Returns the seconds from the first spawn to ``cluster_state:ok``. On any failure
        the nodes started so far are stopped before the error propagates.
        """
        say = progress or (lambda _message: None)
        ports_and_bus = [*self.ports, *map(self.bus_port, self.ports)]
        taken = busy_ports(ports_and_bus)
        if taken:
            raise LocalClusterError(
                f"ports already in use on {LOOPBACK}: {', '.join(map(str, taken))} "
                f"(nodes need {self.ports[0]}-{self.ports[-1]} and bus ports "
                f"{self.bus_port(self.ports[0])}-{self.bus_port(self.ports[-1])}); "
                "choose another base port (--port) or bus port offset (--bus-port-offset)"
            )
        resume = self._saved_topology()
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        try:
            say(f"starting {len(self.ports)} redis-server nodes on {self._port_range()}")
            for port in self.ports:
                self.start_node(port, timeout=self._remaining(deadline))
            if resume:
                say("found nodes.conf for every node: resuming the saved cluster")
            else:
                say(
                    f"creating the cluster: {self.masters} masters, {self.replicas} replica(s) each"
                )
                self._create(self._remaining(deadline))
            say("waiting for cluster_state:ok on every node")
            self.wait_ok(self._remaining(deadline))
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def wait_ok(self, timeout: float = 30.0, *, ports: Sequence[int] | None = None) -> float:
        """Wait until every running node says the cluster is ok; return the seconds waited.

        Ok means, on every running node: ``cluster_state:ok``,
        ``cluster_slots_ok:16384``, every node known, the replication link up on a
        replica (one that never synced would refuse to fail over), no running node
        flagged failing, and the same roles and slots in every node's ``CLUSTER
        NODES``. ``ports`` names the running nodes when other processes started them
        (the command line's later runs); by default they are the nodes this object
        runs. Raises LocalClusterError after ``timeout`` seconds, naming what was
        still missing.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            problems = self._problems(ports)
            if not problems:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise LocalClusterError(
                    f"cluster on {self._port_range()} not ok after {timeout:g}s: "
                    + "; ".join(problems)
                )
            time.sleep(_POLL_INTERVAL_SECONDS)

    def start_node(self, port: int, timeout: float = 10.0) -> None:
        """Start one node (from its nodes.conf, if it has one) and wait for its PING.

        Raises LocalClusterError, in one line, when it exits or does not answer in time.
        """
        server = self._server(port)
        try:
            server.start(timeout)
        except RuntimeError as exc:
            # RedisServer's message ends with the log's tail; its last line says why.
            first, *rest = str(exc).splitlines()
            reason = next((line for line in reversed(rest) if line.strip()), "")
            raise LocalClusterError(
                f"{first.rstrip('.')}: {reason.strip()} (log: {server.logfile})"
                if reason
                else first
            ) from None

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        self._server(port).kill()
        self._paused.discard(port)

    def pause(self, port: int) -> None:
        """Freeze one node with SIGSTOP."""
        self._server(port).pause()
        self._paused.add(port)

    def resume(self, port: int) -> None:
        """Let a paused node run again with SIGCONT."""
        self._server(port).resume()
        self._paused.discard(port)

    def restart(self, port: int, timeout: float = 10.0) -> None:
        """Start one node again from its nodes.conf, stopping it first if it runs.

        Returns once it answers PING; it rejoins the cluster (as a replica, if its
        slots were failed over meanwhile) shortly after: ``wait_ok`` waits for that.
        """
        self._server(port).restart(timeout)
        self._paused.discard(port)

    def stop(self) -> None:
        """Stop every node this object started (SIGTERM, then SIGKILL); idempotent."""
        for port in self.ports:
            self._server(port).stop()
        self._paused.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the cluster says ----------------------------------------------

    def nodes(self) -> list[NodeStatus]:
        """Each node's process state, with role and slots from a running node's view."""
        processes = {port: (self.pid(port), self.state(port)) for port in self.ports}
        return _node_statuses(processes, self._password, self.tls)

    def cluster_info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node, as a dict."""
        (reply,) = _query(port, self._password, [b"CLUSTER", b"INFO"], tls=self.tls)
        if reply.startswith(b"-"):
            raise LocalClusterError(f"{self.address(port)}: CLUSTER INFO failed: {reply!r}")
        return _parse_info(reply)

    def config_set(self, name: str, value: str) -> None:
        """``CONFIG SET name value`` on every running node (``cluster-require-full-coverage``...)."""
        for port in self.ports:
            if self.state(port) == "down":
                continue
            (reply,) = _query(
                port,
                self._password,
                [b"CONFIG", b"SET", name.encode(), value.encode()],
                tls=self.tls,
            )
            if reply.startswith(b"-"):
                raise LocalClusterError(
                    f"{self.address(port)}: CONFIG SET {name} failed: {reply!r}"
                )

    def state_record(self) -> dict[str, Any]:
        """What ``down`` and ``status`` need to find these processes again; no secrets."""
        return {
            "version": _STATE_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": self.host,
            "masters": self.masters,
            "replicas": self.replicas,
            "node_timeout_ms": self.node_timeout_ms,
            "bus_port_offset": self.bus_port_offset,
            "persistence": self.persistence,
            "password_set": self.password_set,
            "tls": None if self.tls is None else self.tls.record(),
            "nodes": [
                {
                    "port": port,
                    "bus_port": self.bus_port(port),
                    "pid": self.pid(port),
                    "start_time": _process_start_time(self.pid(port)),
                    "workdir": str(self._server(port).workdir),
                }
                for port in self.ports
            ],
        }

    def __repr__(self) -> str:
        states = ", ".join(f"{port} {self.state(port)}" for port in self.ports)
        auth = " auth" if self.password_set else ""
        tls = " tls" if self.tls is not None else ""
        return f"<LocalCluster {self.masters}x(1+{self.replicas}) on {self.host}{auth}{tls} [{states}]>"

    # -- insides ----------------------------------------------------------

    def _server(self, port: int) -> RedisServer:
        try:
            return self._servers[port]
        except KeyError:
            raise LocalClusterError(
                f"port {port} is not a node of this cluster ({self._port_range()})"
            ) from None

    def _port_range(self) -> str:
        return f"{self.host}:{self.ports[0]}-{self.ports[-1]}"

    @staticmethod
    def _remaining(deadline: float) -> float:
        # Never zero: a step that starts right at the deadline still gets one try.
        return max(deadline - time.monotonic(), 0.5)

    def _saved_topology(self) -> bool:
        """Whether every node has a nodes.conf from a previous run (resume), or none has."""
        saved = [port for port in self.ports if self.config_file(port).exists()]
        if saved and len(saved) != len(self.ports):
            raise LocalClusterError(
                f"{self.workdir} holds nodes.conf for ports {', '.join(map(str, saved))} "
                f"but not for the others of {self._port_range()}: it is from another "
                "cluster layout; remove it (or choose another directory) to start afresh"
            )
        if not saved:
            return False
        # Any node's nodes.conf lists the whole cluster in CLUSTER NODES' format.
        entries = _parse_cluster_nodes(self.config_file(self.ports[0]).read_bytes())
        masters = sum(1 for entry in entries.values() if entry.role == "master" and entry.slots)
        if sorted(entries) != self.ports or masters != self.masters:
            raise LocalClusterError(
                f"{self.workdir} holds a saved cluster of {masters} masters on ports "
                f"{', '.join(map(str, sorted(entries)))}, not the {self.masters} masters on "
                f"{self._port_range()} asked for; remove it (or choose another directory) "
                "to start afresh"
            )
        return True

    def _create(self, timeout: float) -> None:
        argv = [
            _redis_cli_path(), "--cluster", "create",
            *(self.address(port) for port in self.ports),
            "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
        ]  # fmt: skip
        if self.tls is not None:
            argv += [
                "--tls",
                "--cacert", str(self.tls.ca_cert),
                "--cert", str(self.tls.cert),
                "--key", str(self.tls.key),
            ]  # fmt: skip
        env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
        if self._password is not None:
            # redis-cli reads the password from here; `-a` would show it in `ps`.
            env["REDISCLI_AUTH"] = self._password
        try:
            result = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LocalClusterError(
                f"redis-cli --cluster create did not finish within {timeout:g}s"
            ) from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            tail = "\n".join(output.strip().splitlines()[-20:])
            raise LocalClusterError(
                f"redis-cli --cluster create failed with code {result.returncode}:\n"
                f"{self._redacted(tail)}"
            )

    def _redacted(self, text: str) -> str:
        return redact(text, self._password)

    def _problems(self, ports: Sequence[int] | None = None) -> list[str]:
        running = (
            [port for port in self.ports if self.state(port) == "running"]
            if ports is None
            else list(ports)
        )
        if not running:
            return ["no node is running"]
        problems = []
        views: dict[int, dict[int, tuple[str | None, tuple[tuple[int, int], ...]]]] = {}
        for port in running:
            try:
                cluster, replication, nodes = _query(
                    port,
                    self._password,
                    [b"CLUSTER", b"INFO"],
                    [b"INFO", b"replication"],
                    [b"CLUSTER", b"NODES"],
                    tls=self.tls,
                )
            except OSError as exc:
                problems.append(f"{port}: {exc.__class__.__name__}")
                continue
            problems += self._node_problems(port, _parse_info(cluster), _parse_info(replication))
            entries = _parse_cluster_nodes(nodes)
            problems += [
                f"{port} sees {other} as failing"
                for other, entry in entries.items()
                if other in running and entry.failed
            ]
            views[port] = {
                other: (entry.role, entry.slots)
                for other, entry in entries.items()
                if other in running
            }
        # A node restarted from an old nodes.conf first believes it still owns its old
        # slots, and reports ok, until the others tell it about the newer epoch. Ok
        # therefore also means every running node sees the same roles and slots.
        distinct = {json.dumps(sorted(view.items())) for view in views.values()}
        if len(distinct) > 1:
            problems.append("nodes disagree about roles or slots")
        return problems

    def _node_problems(
        self, port: int, info: Mapping[str, str], replication: Mapping[str, str]
    ) -> list[str]:
        problems = []
        state = info.get("cluster_state", "?")
        if state != "ok":
            problems.append(f"{port}: cluster_state:{state}")
        slots_ok = info.get("cluster_slots_ok", "0")
        if slots_ok != str(TOTAL_SLOTS):
            problems.append(f"{port}: cluster_slots_ok:{slots_ok}")
        known = int(info.get("cluster_known_nodes", "0"))
        if known < len(self.ports):
            problems.append(f"{port}: knows {known} of {len(self.ports)} nodes")
        if replication.get("role") == "slave":
            link = replication.get("master_link_status", "?")
            if link != "up":
                problems.append(f"{port}: replica link {link}")
        return problems


# ---------------------------------------------------------------------------
# Processes recorded in a state file, which may no longer be ours


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if there is no such PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields resume after it.
    return text[text.rindex(")") + 2 :].split()


def _process_start_time(pid: int | None) -> int | None:
    """Clock ticks after boot at which PID started: with the PID, a process's identity."""
    if pid is None:
        return None
    fields = _proc_stat(pid)
    # starttime is field 22 of stat; fields here start at field 3 (state).
    return None if fields is None else int(fields[19])


def _process_state(pid: int) -> str | None:
    """One-letter kernel state (R, S, T for stopped, Z for zombie), None if gone."""
    fields = _proc_stat(pid)
    return None if fields is None else fields[0]


def _is_recorded_server(pid: int, port: int, start_time: int | None) -> bool:
    """Whether PID still is the redis-server the state file recorded on that port.

    Checked before every signal: a PID recycled by the kernel for another process,
    even another redis-server, fails the start-time or the port test.
    """
    state = _process_state(pid)
    if state is None or state == "Z":
        return False
    if start_time is not None and _process_start_time(pid) != start_time:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # redis-server rewrites its title to "redis-server 127.0.0.1:PORT [cluster]"; before
    # it does, the original argv holds "--port PORT".
    words = cmdline.replace(b"\0", b" ").split()
    if not words or not words[0].endswith(b"redis-server"):
        return False
    wanted = str(port).encode()
    return any(word == wanted or word.endswith(b":" + wanted) for word in words[1:])


@dataclass(frozen=True)
class _RecordedNode:
    port: int
    pid: int | None
    start_time: int | None

    def state(self) -> NodeState:
        if self.pid is None or not _is_recorded_server(self.pid, self.port, self.start_time):
            return "down"
        return "paused" if _process_state(self.pid) == "T" else "running"


def _read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILENAME
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalClusterError(
            f"no local cluster recorded in {directory} (no {STATE_FILENAME}); "
            "start one with `pitchey-cache local-cluster up`"
        ) from None
    except (OSError, ValueError) as exc:
        raise LocalClusterError(f"cannot read {path}: {exc}") from None
    if record.get("version") != _STATE_VERSION:
        raise LocalClusterError(f"{path}: unknown format version {record.get('version')!r}")
    return record


def _recorded_nodes(record: Mapping[str, Any]) -> list[_RecordedNode]:
    return [
        _RecordedNode(
            port=int(node["port"]), pid=node.get("pid"), start_time=node.get("start_time")
        )
        for node in record["nodes"]
    ]


def _write_state(directory: Path, record: Mapping[str, Any]) -> Path:
    path = directory / STATE_FILENAME
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(path)
    return path


def stop_recorded(directory: Path, report: Callable[[str], None] = print) -> bool:
    """Stop the servers ``up`` recorded in ``directory``; return whether all are gone.

    Each PID is signalled only while it still is the recorded redis-server on its port.
    SIGTERM first (after SIGCONT, so a paused node can act on it), SIGKILL for any
    node still there after a grace period. The state file is removed once nothing
    recorded runs.
    """
    record = _read_state(directory)
    nodes = _recorded_nodes(record)
    targets = []
    for node in nodes:
        if node.pid is not None and node.state() != "down":
            targets.append(node)
        else:
            report(f"  {node.port}: pid {node.pid} is not running (or is no longer ours)")
    for node in targets:
        _signal_recorded(node, signal.SIGCONT)
        _signal_recorded(node, signal.SIGTERM)
    left = _wait_gone(targets, _STOP_GRACE_SECONDS)
    for node in left:
        report(f"  {node.port}: pid {node.pid} ignored SIGTERM; sending SIGKILL")
        _signal_recorded(node, signal.SIGKILL)
    left = _wait_gone(left, _STOP_GRACE_SECONDS)
    for node in targets:
        if node not in left:
            report(f"  {node.port}: stopped pid {node.pid}")
    for node in left:
        report(f"  {node.port}: pid {node.pid} is still running after SIGKILL")
    if left:
        return False
    (directory / STATE_FILENAME).unlink(missing_ok=True)
    return True


def _signal_recorded(node: _RecordedNode, signum: signal.Signals) -> None:
    # Checked right before each signal, not once up front: the process may exit and its
    # PID be reused while we wait.
    if node.pid is None or not _is_recorded_server(node.pid, node.port, node.start_time):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.pid, signum)


def _wait_gone(nodes: Sequence[_RecordedNode], timeout: float) -> list[_RecordedNode]:
    deadline = time.monotonic() + timeout
    while True:
        # A zombie counts as gone: it runs nothing, and only its parent can reap it.
        left = [node for node in nodes if node.state() != "down"]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(_POLL_INTERVAL_SECONDS)


# ---------------------------------------------------------------------------
# The command line

# Signals of the single-node commands, by name; `restart` is not a signal.
_NODE_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}
_NODE_ACTIONS = {
    "kill": "kill -9 one node (SIGKILL): a crash",
    "stop": "freeze one node (SIGSTOP): it holds its connections and answers nothing",
    "cont": "let a frozen node run again (SIGCONT)",
    "restart": "stop one node if it runs, then start it again from its nodes.conf",
}


def run_local_cluster_command(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """``pitchey-cache local-cluster ACTION``; returns the process exit code.

    Every failure is one line on stderr and exit code 1, never a traceback.
    """
    env = os.environ if environ is None else environ
    args = _parser().parse_args(list(argv))
    try:
        if args.action == "up":
            return _up(args, env)
        if args.action == "status":
            return _status(args.dir, _password_from(args, env))
        if args.action == "down":
            return _down(args.dir)
        return _node_action(args.action, args.dir, args.node, _password_from(args, env))
    except (LocalClusterError, OSError) as exc:
        print(f"pitchey-cache local-cluster {args.action}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # `up` has already stopped the nodes it started by the time this arrives here.
        print(f"pitchey-cache local-cluster {args.action}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pitchey-cache local-cluster",
        description="Run a Redis Cluster of local redis-server processes on 127.0.0.1.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    password_help = (
        f"cluster password (prefer the {PASSWORD_VARIABLE} environment variable: "
        "a command line is visible to every user in `ps`)"
    )
    dir_help = f"where node data, logs and the state file live (default {DEFAULT_DIR})"

    up = actions.add_parser(
        "up",
        help="start the nodes, create the cluster, wait until ok; on a recorded cluster, "
        "start again only the nodes that are gone",
    )
    # The layout options default to None, so that `up` on a recorded cluster can tell
    # a layout asked for from one left to the record.
    up.add_argument("--masters", type=int, help="masters (default 3, minimum 3)")
    up.add_argument("--replicas", type=int, help="replicas per master (default 1)")
    up.add_argument("--port", type=int, help=f"first node's port (default {DEFAULT_BASE_PORT})")
    up.add_argument(
        "--bus-port-offset",
        type=int,
        metavar="N",
        help=f"each node's cluster bus listens on its port + N (default {BUS_PORT_OFFSET})",
    )
    up.add_argument("--password", help=password_help)
    up.add_argument(
        "--persistence",
        action="store_true",
        help="AOF (appendfsync everysec) plus RDB snapshots, as the guide's backup section advises",
    )
    up.add_argument(
        "--node-timeout",
        type=int,
        default=DEFAULT_NODE_TIMEOUT_MS,
        metavar="MS",
        help="cluster-node-timeout in ms (default 5000)",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up if the cluster is not ok after this long (default 60)",
    )
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=dir_help)
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS only: to clients, between replicas and on the cluster bus, with a CA and "
        "node certificate made by openssl (kept in --tls-dir); prints the REDIS_TLS_ lines",
    )
    up.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help=f"where the CA and node certificate are made, or reused (default DIR/{TLS_SUBDIR})",
    )

    status = actions.add_parser("status", help="show each node and the cluster state")
    status.add_argument("--password", help=password_help)
    status.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=dir_help)

    down = actions.add_parser("down", help="stop exactly the servers `up` started, by PID")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=dir_help)

    for action, text in _NODE_ACTIONS.items():
        node = actions.add_parser(action, help=text, description=text)
        node.add_argument("node", type=int, metavar="PORT", help="the node's client port")
        node.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=dir_help)
        if action == "restart":
            node.add_argument("--password", help=password_help)
    return parser


def _password_from(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    given: str | None = getattr(args, "password", None)
    password = given if given is not None else env.get(PASSWORD_VARIABLE)
    return password or None


def _progress(message: str) -> None:
    # Progress goes to stderr so that stdout carries only the lines to export:
    # `eval "$(pitchey-cache local-cluster up)"` and `... up > .env.cluster` work.
    print(message, file=sys.stderr, flush=True)


def _print_exports(cluster: LocalCluster) -> None:
    """The settings a shell (or `eval "$(...)"`) exports to use this cluster."""
    settings = {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": cluster.seeds}
    if cluster.tls is not None:
        settings |= {"REDIS_TLS_ENABLED": "true", "REDIS_TLS_CA_CERT": str(cluster.tls.ca_cert)}
    for name, value in settings.items():
        print(f"export {name}={shlex.quote(value)}", flush=True)


def _cluster_from_record(
    directory: Path, record: Mapping[str, Any], password: str | None
) -> LocalCluster:
    """A LocalCluster of the layout ``up`` recorded, to start some of its nodes again."""
    if record.get("password_set") and password is None:
        raise LocalClusterError(
            f"the nodes need a password: set {PASSWORD_VARIABLE} to the one given to `up`"
        )
    ports = [int(node["port"]) for node in record["nodes"]]
    return LocalCluster(
        workdir=directory,
        masters=int(record["masters"]),
        replicas=int(record["replicas"]),
        base_port=ports[0],
        node_timeout_ms=int(record["node_timeout_ms"]),
        password=password,
        persistence=bool(record["persistence"]),
        tls=ServerTls.from_record(record["tls"]) if record.get("tls") else None,
        bus_port_offset=int(record.get("bus_port_offset", BUS_PORT_OFFSET)),
    )


def _released(cluster: LocalCluster) -> None:
    """Forget the processes ``cluster`` started, leaving them running.

    From here they belong to the developer, and later commands find them by the PIDs in
    the state file. subprocess.Popen warns when it is dropped while its child runs;
    here that is the intent, not a leak.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del cluster


def _restart_nodes(
    directory: Path, record: dict[str, Any], ports: Sequence[int], password: str | None
) -> LocalCluster:
    """Start the recorded nodes on ``ports`` again and record their new PIDs."""
    cluster = _cluster_from_record(directory, record, password)
    taken = busy_ports([*ports, *map(cluster.bus_port, ports)])
    if taken:
        raise LocalClusterError(
            f"ports already in use on {LOOPBACK}: {', '.join(map(str, taken))}; "
            "something else holds a node's port"
        )
    for port in ports:
        _progress(f"starting the node on {cluster.address(port)}")
        cluster.start_node(port)
    pids = {port: cluster.pid(port) for port in ports}
    for node in record["nodes"]:
        if node["port"] in pids:
            node["pid"] = pids[node["port"]]
            node["start_time"] = _process_start_time(pids[node["port"]])
    _write_state(directory, record)
    return cluster


def _up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    directory: Path = args.dir
    password = _password_from(args, env)
    if args.tls_dir is not None and not args.tls:
        raise LocalClusterError("--tls-dir needs --tls")
    if args.password is not None:
        _progress(
            f"warning: --password is visible to other users in `ps`; prefer {PASSWORD_VARIABLE}"
        )
    # The layout `up` recorded last (all its nodes gone, say after a reboot) is the
    # default for the options not given, so a plain `up` resumes that cluster.
    layout = {
        "masters": MIN_MASTERS,
        "replicas": 1,
        "port": DEFAULT_BASE_PORT,
        "bus_port_offset": BUS_PORT_OFFSET,
    }
    if (directory / STATE_FILENAME).exists():
        record = _read_state(directory)
        nodes = _recorded_nodes(record)
        alive = [node.port for node in nodes if node.state() != "down"]
        if alive:
            return _up_again(args, directory, record, alive, password)
        layout = {
            "masters": int(record["masters"]),
            "replicas": int(record["replicas"]),
            "port": nodes[0].port,
            "bus_port_offset": int(record.get("bus_port_offset", BUS_PORT_OFFSET)),
        }
    masters = layout["masters"] if args.masters is None else args.masters
    replicas = layout["replicas"] if args.replicas is None else args.replicas
    if not directory.exists():
        directory.mkdir(parents=True)
        # Like .pytest_cache: the folder keeps itself out of git. Only in a folder made
        # here, so that `--dir .` can never replace a project's own .gitignore.
        (directory / ".gitignore").write_text("# Created by pitchey-cache local-cluster\n*\n")
    tls = _node_tls(args.tls_dir or directory / TLS_SUBDIR) if args.tls else None
    cluster = LocalCluster(
        workdir=directory,
        masters=masters,
        replicas=replicas,
        base_port=layout["port"] if args.port is None else args.port,
        node_timeout_ms=args.node_timeout,
        password=password,
        persistence=args.persistence,
        tls=tls,
        bus_port_offset=layout["bus_port_offset"]
        if args.bus_port_offset is None
        else args.bus_port_offset,
    )
    try:
        seconds = cluster.start(timeout=args.timeout, progress=_progress)
        state_path = _write_state(directory, cluster.state_record())
    except BaseException:
        cluster.stop()
        raise
    _progress(
        f"cluster_state:ok after {seconds:.1f}s: {masters} masters, "
        f"{masters * replicas} replicas on {cluster.host}:{cluster.ports[0]}-"
        f"{cluster.ports[-1]} (bus {cluster.bus_port(cluster.ports[0])}-"
        f"{cluster.bus_port(cluster.ports[-1])})"
        f"{' with persistence (AOF + RDB)' if args.persistence else ''}"
        f"{', TLS only' if tls is not None else ''}"
    )
    _progress(f"state: {state_path}; stop with: pitchey-cache local-cluster down --dir {directory}")
    if password is not None:
        _progress(f"the nodes require a password: also set {PASSWORD_VARIABLE} to it (not printed)")
    _progress('settings for this cluster (or run: eval "$(pitchey-cache local-cluster up)"):')
    _print_exports(cluster)
    _released(cluster)
    return 0


def _up_again(
    args: argparse.Namespace,
    directory: Path,
    record: dict[str, Any],
    alive: Sequence[int],
    password: str | None,
) -> int:
    """``up`` on a cluster that still runs: start only the nodes that are gone."""
    ports = [node.port for node in _recorded_nodes(record)]
    asked = {
        "--port": (args.port, ports[0]),
        "--masters": (args.masters, record["masters"]),
        "--replicas": (args.replicas, record["replicas"]),
        "--bus-port-offset": (
            args.bus_port_offset,
            record.get("bus_port_offset", BUS_PORT_OFFSET),
        ),
    }
    differ = [
        f"{option} {given}"
        for option, (given, recorded) in asked.items()
        if given is not None and given != recorded
    ]
    if differ:
        raise LocalClusterError(
            f"the cluster recorded in {directory} still runs on {ports[0]}-{ports[-1]}, "
            f"not with {', '.join(differ)}; `up` there can only bring back its own nodes. "
            "Stop it first: "
            f"pitchey-cache local-cluster down --dir {directory}"
        )
    gone = [port for port in ports if port not in alive]
    if not gone:
        cluster = _cluster_from_record(directory, record, password)
        _progress(f"the cluster recorded in {directory} already runs; nothing to start")
    else:
        cluster = _restart_nodes(directory, record, gone, password)
        _progress("waiting until the node(s) rejoined the cluster")
        try:
            cluster.wait_ok(args.timeout, ports=ports)
        finally:
            _released(cluster)
        _progress(f"back: {', '.join(map(str, gone))}")
    _print_exports(cluster)
    return 0


def _node_action(action: str, directory: Path, port: int, password: str | None) -> int:
    """``kill | stop | cont | restart PORT``: one node of the recorded cluster."""
    record = _read_state(directory)
    nodes = {node.port: node for node in _recorded_nodes(record)}
    node = nodes.get(port)
    if node is None:
        ports = sorted(nodes)
        raise LocalClusterError(
            f"port {port} is not a node of the cluster in {directory} "
            f"(its nodes are on {ports[0]}-{ports[-1]})"
        )
    state = node.state()
    if action == "restart":
        if state != "down":
            _signal_recorded(node, signal.SIGCONT)
            _signal_recorded(node, signal.SIGTERM)
            if _wait_gone([node], _STOP_GRACE_SECONDS):
                _signal_recorded(node, signal.SIGKILL)
                if _wait_gone([node], _STOP_GRACE_SECONDS):
                    raise LocalClusterError(f"pid {node.pid} on port {port} does not stop")
        cluster = _restart_nodes(directory, record, [port], password)
        print(f"{port}: restarted as pid {cluster.pid(port)} (it rejoins the cluster shortly)")
        _released(cluster)
        return 0
    if state == "down":
        raise LocalClusterError(
            f"the node on port {port} is not running; start it again with: "
            f"pitchey-cache local-cluster restart {port}"
            + ("" if directory == DEFAULT_DIR else f" --dir {directory}")
        )
    _signal_recorded(node, _NODE_SIGNALS[action])
    if action == "kill":
        _wait_gone([node], _STOP_GRACE_SECONDS)
    done = {"kill": "killed", "stop": "frozen (SIGSTOP)", "cont": "running again (SIGCONT)"}
    print(f"{port}: pid {node.pid} {done[action]}")
    return 0


def _node_tls(tls_dir: Path) -> ServerTls:
    """The nodes' TLS files in ``tls_dir``: made there by openssl, or reused from a
    previous `up`, so a CA path exported then stays valid."""
    try:
        authority = LocalCertificateAuthority(
            tls_dir, name="pitchey-cache local-cluster CA", days=365
        )
        return authority.server_tls("redis-node")
    except (RuntimeError, OSError) as exc:
        raise LocalClusterError(f"cannot make TLS certificates in {tls_dir}: {exc}") from None


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, as wide as their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _status(directory: Path, password: str | None) -> int:
    record = _read_state(directory)
    nodes = _recorded_nodes(record)
    processes = {node.port: (node.pid, node.state()) for node in nodes}
    tls = ServerTls.from_record(record["tls"]) if record.get("tls") else None
    offset = int(record.get("bus_port_offset", BUS_PORT_OFFSET))
    statuses = _node_statuses(processes, password, tls)
    print(
        f"local cluster in {directory}: {record['masters']} masters x {record['replicas']} "
        f"replica(s), started {record['created']}, node timeout {record['node_timeout_ms']} ms"
        f"{', persistence on' if record['persistence'] else ''}"
        f"{', password required' if record['password_set'] else ''}"
        f"{', TLS only' if tls is not None else ''}"
    )
    rows = [["PORT", "PID", "BUS", "PROCESS", "ROLE", "SEEN AS", "SLOTS"]]
    for status in statuses:
        if status.role == "replica" and status.master_port is not None:
            slots = f"(replica of {status.master_port})"
        else:
            slots = status.describe_slots() or "-"
        process = {"running": "running", "paused": "frozen", "down": "down"}[status.state]
        seen = "-" if status.role is None else "failing" if status.failed else "ok"
        rows.append(
            [
                str(status.port),
                str(status.pid or "-") if status.state != "down" else "-",
                str(bus_port(status.port, offset)),
                process,
                status.role or "?",
                seen,
                slots,
            ]
        )
    for line in _table(rows):
        print(line)
    running = [node.port for node in nodes if processes[node.port][1] == "running"]
    if not running:
        print("cluster_state: unknown (no node running)")
        return 1
    if record["password_set"] and password is None:
        print(f"cluster_state: unknown (the nodes need a password: set {PASSWORD_VARIABLE})")
        return 1
    for port in running:
        try:
            (reply,) = _query(port, password, [b"CLUSTER", b"INFO"], tls=tls)
        except OSError:
            continue
        state = _parse_info(reply).get("cluster_state", "?")
        print(f"cluster_state: {state} (asked {LOOPBACK}:{port})")
        return 0 if state == "ok" else 1
    print("cluster_state: unknown (no running node answered)")
    return 1


def _down(directory: Path) -> int:
    print(f"stopping the local cluster recorded in {directory}")
    if stop_recorded(directory):
        print("all stopped")
        return 0
    print("some nodes could not be stopped", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(run_local_cluster_command(sys.argv[1:]))
