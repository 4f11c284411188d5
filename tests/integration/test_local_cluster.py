"""A real Redis Cluster on loopback: it forms, spreads keys, fails over and rejoins.

Every claim is checked by asking the servers over raw sockets, with a client written
here independently of the launcher's own probes, so the tests do not trust the code
they check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pitchey_cache.devtools.local_cluster import (
    BUS_PORT_OFFSET,
    LocalCluster,
    LocalClusterError,
    NodeStatus,
    busy_ports,
    free_port_block,
    run_local_cluster_command,
)
from pitchey_cache.devtools.local_redis import RedisServer

PASSWORD = 'cluster "pass" \\word $HOME'
NODE_TIMEOUT_MS = 1000
REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "redis-cluster-docker-compose.yml"


# ---------------------------------------------------------------------------
# An independent, minimal RESP client


class Node:
    """One connection to one node; replies as bytes, bulk strings without framing."""

    def __init__(self, port: int, password: str | None = None, timeout: float = 2.0) -> None:
        self.port = port
        self._conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        if password is not None:
            assert self.call(b"AUTH", password.encode()) == b"+OK"

    def close(self) -> None:
        self._conn.close()

    def call(self, *parts: bytes) -> bytes:
        payload = b"*%d\r\n" % len(parts)
        for part in parts:
            payload += b"$%d\r\n%s\r\n" % (len(part), part)
        self._conn.sendall(payload)
        return self._reply()

    def call_array(self, *parts: bytes) -> list[bytes]:
        header = self.call(*parts)
        assert header.startswith(b"*"), header
        return [self._reply() for _ in range(int(header[1:]))]

    def info(self, *parts: bytes) -> dict[str, str]:
        text = self.call(*parts).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _reply(self) -> bytes:
        line = self._line()
        if line[:1] != b"$":
            return line
        size = int(line[1:])
        if size < 0:
            return b""
        while len(self._buffer) < size + 2:
            self._recv()
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._recv()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _recv(self) -> None:
        chunk = self._conn.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self._buffer += chunk


def ask(port: int, *parts: bytes, password: str | None = None) -> bytes:
    node = Node(port, password)
    try:
        return node.call(*parts)
    finally:
        node.close()


def ask_info(port: int, *parts: bytes, password: str | None = None) -> dict[str, str]:
    node = Node(port, password)
    try:
        return node.info(*parts)
    finally:
        node.close()


def set_following_redirects(port: int, key: str, value: str, password: str | None = None) -> int:
    """SET through the cluster the way a client must: follow MOVED; return the owner port."""
    for _ in range(3):
        reply = ask(port, b"SET", key.encode(), value.encode(), password=password)
        if reply == b"+OK":
            return port
        assert reply.startswith(b"-MOVED"), reply
        port = int(reply.split()[-1].rsplit(b":", 1)[1])
    raise AssertionError(f"SET {key} kept being redirected")


def cluster_nodes(port: int, password: str | None = None) -> list[list[str]]:
    text = ask(port, b"CLUSTER", b"NODES", password=password).decode()
    return [line.split() for line in text.splitlines()]


def role_of(port: int, asked: int) -> str:
    """The flags of ``port`` as node ``asked`` sees them."""
    for fields in cluster_nodes(asked):
        if fields[1].split("@")[0].endswith(f":{port}"):
            return fields[2]
    raise AssertionError(f"{asked} does not know {port}")


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    # Reparented servers may linger as zombies until PID 1 reaps them; they run nothing.
    return state == "Z"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition()`` until true; return the seconds it took, fail after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, AssertionError):
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def recorded_pids(directory: Path) -> list[int]:
    record = json.loads((directory / "local-cluster.json").read_text())
    return [int(node["pid"]) for node in record["nodes"]]


def masters(nodes: Sequence[NodeStatus]) -> list[NodeStatus]:
    return [node for node in nodes if node.role == "master" and node.slots]


# ---------------------------------------------------------------------------
# Fixtures


def new_cluster(workdir: Path, password: str | None = None, replicas: int = 1) -> LocalCluster:
    return LocalCluster(
        workdir=workdir,
        masters=3,
        replicas=replicas,
        base_port=free_port_block(3 * (1 + replicas)),
        node_timeout_ms=NODE_TIMEOUT_MS,
        password=password,
    )


@dataclass(frozen=True)
class FormedCluster:
    cluster: LocalCluster
    formation_seconds: float


@pytest.fixture(scope="module")
def formed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FormedCluster]:
    """One cluster shared by the tests that leave it as they found it."""
    local = new_cluster(tmp_path_factory.mktemp("shared-cluster"))
    started = time.monotonic()
    local.start(timeout=30)
    try:
        yield FormedCluster(local, time.monotonic() - started)
    finally:
        local.stop()
    assert all(local.pid(port) is None for port in local.ports)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own, for a test that kills or restarts nodes."""
    local = new_cluster(tmp_path / "cluster")
    local.start(timeout=30)
    try:
        yield local
    finally:
        local.stop()


def run_cli_process(
    *args: str, env_password: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as a developer runs it: its own process, which exits after `up`."""
    env = {key: value for key, value in os.environ.items() if key != "REDIS_CLUSTER_PASSWORD"}
    if env_password is not None:
        env["REDIS_CLUSTER_PASSWORD"] = env_password
    return subprocess.run(  # noqa: S603 - the test's own interpreter and module
        [sys.executable, "-m", "pitchey_cache.devtools.local_cluster", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------------
# The cluster


def test_six_nodes_form_a_cluster_of_three_masters_and_three_replicas(
    formed: FormedCluster,
) -> None:
    local = formed.cluster
    print(f"6-node cluster ok {formed.formation_seconds:.2f}s after the first spawn")

    for port in local.ports:
        info = ask_info(port, b"CLUSTER", b"INFO")
        assert info["cluster_state"] == "ok", port
        assert info["cluster_slots_ok"] == "16384", port
        assert info["cluster_known_nodes"] == "6", port
    nodes = local.nodes()
    owners = masters(nodes)
    assert len(owners) == 3
    covered = {
        slot for node in owners for first, last in node.slots for slot in range(first, last + 1)
    }
    # Every slot once: all covered, and the counts add up, so none is owned twice.
    assert covered == set(range(16384))
    assert sum(node.slot_count for node in owners) == 16384
    replicas = [node for node in nodes if node.role == "replica"]
    assert len(replicas) == 3
    assert {node.master_port for node in replicas} == {node.port for node in owners}
    assert local.seeds == ",".join(f"127.0.0.1:{port}" for port in local.ports)
    assert all(f"{port} running" in repr(local) for port in local.ports)
    # The architecture notes measured about 1-2 s with a 1 s node timeout.
    assert formed.formation_seconds < 10


def test_keys_spread_over_all_three_masters(formed: FormedCluster) -> None:
    cluster = formed.cluster
    seed = cluster.ports[0]
    for index in range(300):
        set_following_redirects(seed, f"user:{index}", "x")

    owners = masters(cluster.nodes())
    sizes = {node.port: int(ask(node.port, b"DBSIZE")[1:]) for node in owners}
    print(f"keys per master: {sizes}")
    assert sum(sizes.values()) == 300
    # About 100 each; under 50 on any master would mean keys are not spread by slot.
    assert all(size > 50 for size in sizes.values()), sizes


def test_killed_master_is_replaced_by_its_replica_and_rejoins_as_replica(
    cluster: LocalCluster,
) -> None:
    victim = masters(cluster.nodes())[0]
    (heir,) = (node for node in cluster.nodes() if node.master_port == victim.port)
    key = next(f"k{i}" for i in range(10000) if _owner(cluster, f"k{i}") == victim.port)
    writer = Node(victim.port)
    try:
        assert writer.call(b"SET", key.encode(), b"before") == b"+OK"
        # Replication is asynchronous: without this, a write made just before kill -9
        # may be lost. WAIT counts acks of this connection's own writes, so it must run
        # on the connection that wrote (on a fresh one it returns at once).
        assert writer.call(b"WAIT", b"1", b"5000") == b":1"
    finally:
        writer.close()

    cluster.kill(victim.port)
    assert f"{victim.port} down" in repr(cluster)
    promotion = wait_for(
        lambda: (
            "master" in role_of(heir.port, heir.port)
            and ask_info(heir.port, b"CLUSTER", b"INFO")["cluster_state"] == "ok"
        ),
        timeout=15,
        what=f"replica {heir.port} promoted",
    )
    print(f"replica promoted and cluster ok {promotion:.2f}s after kill -9 of a master")
    cluster.wait_ok(10)

    after = {node.port: node for node in cluster.nodes()}
    assert after[heir.port].role == "master"
    assert after[heir.port].slots == victim.slots
    assert after[victim.port].state == "down"
    assert after[victim.port].failed
    assert ask(heir.port, b"GET", key.encode()) == b"before"
    # With a 1 s node timeout: failure detection plus election, measured 2-4 s here.
    assert promotion < 10

    assert cluster.config_file(victim.port).exists()
    cluster.restart(victim.port)
    rejoin = cluster.wait_ok(15)
    print(f"old master rejoined as a replica {rejoin:.2f}s after it answered PING")

    rejoined = {node.port: node for node in cluster.nodes()}[victim.port]
    assert rejoined.role == "replica"
    assert rejoined.master_port == heir.port
    assert rejoined.node_id == victim.node_id
    assert ask_info(victim.port, b"INFO", b"replication")["role"] == "slave"
    assert ask(victim.port, b"GET", key.encode()).startswith(b"-MOVED")


def _owner(cluster: LocalCluster, key: str) -> int:
    slot = int(ask(cluster.ports[0], b"CLUSTER", b"KEYSLOT", key.encode())[1:])
    for node in masters(cluster.nodes()):
        if any(first <= slot <= last for first, last in node.slots):
            return node.port
    raise AssertionError(f"no master owns slot {slot}")


def test_paused_node_shows_paused_and_serves_after_resume(formed: FormedCluster) -> None:
    cluster = formed.cluster
    port = cluster.ports[-1]
    cluster.pause(port)
    # Far shorter than the node timeout, so the cluster does not fail it over.
    node = Node(port, timeout=0.3)
    try:
        assert f"{port} paused" in repr(cluster)
        assert cluster.state(port) == "paused"
        with pytest.raises(TimeoutError):
            node.call(b"PING")
    finally:
        node.close()
        cluster.resume(port)
    assert ask(port, b"PING") == b"+PONG"
    cluster.wait_ok(10)


def test_ports_in_use_are_named_and_nothing_is_started(tmp_path: Path) -> None:
    base = free_port_block(6)
    holder = socket.socket()
    # A bus port, not a client port: redis-server would fail only after the others.
    holder.bind(("127.0.0.1", base + 2 + BUS_PORT_OFFSET))
    holder.listen()
    try:
        local = LocalCluster(workdir=tmp_path, base_port=base, node_timeout_ms=NODE_TIMEOUT_MS)
        with pytest.raises(LocalClusterError, match=str(base + 2 + BUS_PORT_OFFSET)):
            local.start(timeout=10)
        assert all(local.pid(port) is None for port in local.ports)
    finally:
        holder.close()


def test_bus_ports_above_65535_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalClusterError, match="65535"):
        LocalCluster(workdir=tmp_path, base_port=55533)


# ---------------------------------------------------------------------------
# Passwords


def test_password_cluster_works_and_the_password_shows_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = new_cluster(tmp_path / "auth", password=PASSWORD)
    try:
        # Replicas sync only with masterauth, and start() waits for their links.
        local.start(timeout=30)
        nodes = local.nodes()
        assert len(masters(nodes)) == 3
        assert sum(node.role == "replica" for node in nodes) == 3

        port = local.ports[0]
        assert ask(port, b"PING").startswith(b"-NOAUTH")
        assert ask(port, b"PING", password=PASSWORD) == b"+PONG"
        for port in local.ports:
            pid = local.pid(port)
            assert pid is not None
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
            config = local.workdir / str(port) / f"redis-{port}.conf"
            assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert PASSWORD not in repr(local)
        assert "auth" in repr(local)
        assert PASSWORD not in repr(nodes)

        # A client with a wrong password, and a second cluster on the same ports.
        wrong = LocalCluster(
            workdir=tmp_path / "wrong", base_port=local.ports[0], password=PASSWORD + "x"
        )
        with pytest.raises(LocalClusterError) as refused:
            wrong.cluster_info(local.ports[0])
        assert "WRONGPASS" in str(refused.value)
        with pytest.raises(LocalClusterError) as clash:
            wrong.start(timeout=10)
        for error in (refused.value, clash.value):
            assert PASSWORD not in str(error)
            assert PASSWORD not in repr(error)
    finally:
        local.stop()
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err


# ---------------------------------------------------------------------------
# The command line


def test_cli_up_status_down_stops_exactly_the_servers_it_started(
    tmp_path: Path,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = tmp_path / "local-cluster"
    base = free_port_block(6)
    up = run_cli_process(
        "up", "--port", str(base), "--node-timeout", str(NODE_TIMEOUT_MS), "--dir", str(directory),
        env_password=PASSWORD,
    )  # fmt: skip
    print(up.stderr)
    state_path = directory / "local-cluster.json"
    record = json.loads(state_path.read_text()) if state_path.exists() else {"nodes": []}
    pids = [node["pid"] for node in record["nodes"]]
    try:
        assert up.returncode == 0, up.stderr
        ports = list(range(base, base + 6))
        seeds = ",".join(f"127.0.0.1:{port}" for port in ports)
        assert up.stdout.splitlines() == [
            "export REDIS_CLUSTER_ENABLED=true",
            f"export REDIS_CLUSTER_NODES={seeds}",
        ]
        assert "REDIS_CLUSTER_PASSWORD" in up.stderr
        assert PASSWORD not in up.stdout + up.stderr
        assert PASSWORD not in state_path.read_text()
        # `up` has exited; the servers live on, each the redis-server on its port.
        assert [node["port"] for node in record["nodes"]] == ports
        for port in ports:
            assert ask(port, b"PING", password=PASSWORD) == b"+PONG"
            assert ask_info(port, b"INFO", b"server", password=PASSWORD)["process_id"] == str(
                pids[port - base]
            )

        env = {"REDIS_CLUSTER_PASSWORD": PASSWORD}
        assert run_local_cluster_command(["status", "--dir", str(directory)], env) == 0
        status = capsys.readouterr().out
        assert "cluster_state: ok" in status
        assert status.count(" master ") == 3
        assert status.count(" replica ") == 3
        for port, pid in zip(ports, pids, strict=True):
            assert f"{port}  {pid}" in status
        # Without the password, status says what is missing instead of guessing.
        assert run_local_cluster_command(["status", "--dir", str(directory)], {}) == 1
        assert "REDIS_CLUSTER_PASSWORD" in capsys.readouterr().out

        # A second `up` into the same directory starts nothing and says so; one for
        # another layout refuses rather than double-starting.
        again = run_cli_process(
            "up", "--port", str(base), "--dir", str(directory), env_password=PASSWORD
        )
        assert again.returncode == 0, again.stderr
        assert "already runs" in again.stderr
        assert again.stdout == up.stdout
        assert recorded_pids(directory) == pids
        other = run_cli_process("up", "--port", str(base + 100), "--dir", str(directory))
        assert other.returncode == 1
        assert "down" in other.stderr

        assert run_local_cluster_command(["down", "--dir", str(directory)], {}) == 0
        down = capsys.readouterr().out
        assert all(f"stopped pid {pid}" in down for pid in pids)
        assert all(process_gone(pid) for pid in pids)
        for port in ports:
            with pytest.raises(ConnectionRefusedError):
                ask(port, b"PING")
        assert not state_path.exists()
        # Another redis-server, not started by `up`, is untouched.
        assert ask(redis_server.port, b"PING") == b"+PONG"
        assert PASSWORD not in status + down
    finally:
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_cli_persistence_keeps_data_across_down_and_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "persistent"
    base = free_port_block(6)
    args = ("up", "--port", str(base), "--node-timeout", str(NODE_TIMEOUT_MS), "--persistence")
    pids: list[int] = []
    try:
        first = run_cli_process(*args, "--dir", str(directory))
        assert first.returncode == 0, first.stderr
        pids += recorded_pids(directory)
        for port in range(base, base + 6):
            assert ask_info(port, b"INFO", b"persistence")["aof_enabled"] == "1"
            assert (directory / str(port) / "appendonlydir").is_dir()
            node = Node(port)
            try:
                assert node.call_array(b"CONFIG", b"GET", b"save") == [
                    b"save",
                    b"3600 1 300 100 60 10000",
                ]
            finally:
                node.close()
        owners = {set_following_redirects(base, f"saved:{i}", str(i)) for i in range(30)}
        assert len(owners) == 3
        assert run_local_cluster_command(["down", "--dir", str(directory)], {}) == 0

        second = run_cli_process(*args, "--dir", str(directory))
        assert second.returncode == 0, second.stderr
        assert "resuming" in second.stderr
        pids += recorded_pids(directory)
        for i in range(30):
            port = base
            reply = ask(port, b"GET", f"saved:{i}".encode())
            if reply.startswith(b"-MOVED"):
                port = int(reply.split()[-1].rsplit(b":", 1)[1])
                reply = ask(port, b"GET", f"saved:{i}".encode())
            assert reply == str(i).encode()
        assert run_local_cluster_command(["down", "--dir", str(directory)], {}) == 0
        capsys.readouterr()
    finally:
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_down_never_signals_a_pid_that_is_no_longer_the_recorded_server(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = redis_server.pid
    assert pid is not None
    start_time = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    record = {
        "version": 1, "created": "2026-01-01T00:00:00+00:00", "host": "127.0.0.1",
        "masters": 3, "replicas": 0, "node_timeout_ms": 1000, "persistence": False,
        "password_set": False,
        "nodes": [
            # A redis-server, but on another port than recorded.
            {"port": redis_server.port + 1, "pid": pid, "start_time": start_time},
            # The right port, but a process that started at another time (a reused PID).
            {"port": redis_server.port, "pid": pid, "start_time": start_time + 1},
            # Not a redis-server at all: this test runner.
            {"port": redis_server.port, "pid": os.getpid(), "start_time": None},
        ],
    }  # fmt: skip
    (tmp_path / "local-cluster.json").write_text(json.dumps(record))

    assert run_local_cluster_command(["down", "--dir", str(tmp_path)], {}) == 0

    assert "no longer ours" in capsys.readouterr().out
    assert redis_server.pid == pid
    assert ask(redis_server.port, b"PING") == b"+PONG"


# One cluster's life, step by step: cheaper than a cluster per step.
def test_cli_from_a_fresh_checkout_drives_single_nodes(tmp_path: Path) -> None:  # noqa: PLR0915
    """The README's commands as a newcomer types them: relative default directory,
    a node killed, frozen, thawed and restarted, `up` bringing back a dead node."""
    base = free_port_block(6)
    offset = 20000 if not busy_ports(range(base + 20000, base + 20006)) else 10000

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli_process(*args, cwd=tmp_path)

    up = cli("up", "--port", str(base), "--node-timeout", "1000", "--bus-port-offset", str(offset))
    directory = tmp_path / ".pitchey-cache" / "local-cluster"
    pids = recorded_pids(directory) if (directory / "local-cluster.json").exists() else []
    try:
        assert up.returncode == 0, up.stderr
        # Every stdout line works pasted into a shell, or through eval "$(...)".
        shell = subprocess.run(
            ["bash", "-c", 'eval "$(cat)"; echo "$REDIS_CLUSTER_NODES"'],  # noqa: S607
            input=up.stdout,
            capture_output=True,
            text=True,
            check=True,
        )
        assert shell.stdout.strip() == ",".join(f"127.0.0.1:{base + i}" for i in range(6))
        for port in range(base, base + 6):
            node = Node(port)
            try:
                bus = node.call_array(b"CONFIG", b"GET", b"cluster-port")[1]
                coverage = node.call_array(b"CONFIG", b"GET", b"cluster-require-full-coverage")
            finally:
                node.close()
            assert bus == str(port + offset).encode()
            assert coverage[1] == b"no"

        victim = base + 5  # a replica: the others keep serving every slot
        killed = cli("kill", str(victim))
        assert killed.returncode == 0, killed.stderr
        assert process_gone(pids[5])
        status = cli("status")
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
        assert rows["PORT"] == ["PORT", "PID", "BUS", "PROCESS", "ROLE", "SEEN", "AS", "SLOTS"]
        assert rows[str(victim)][:4] == [str(victim), "-", str(victim + offset), "down"]
        assert rows[str(base)][:5] == [
            str(base),
            str(pids[0]),
            str(base + offset),
            "running",
            "master",
        ]
        # A node that is down is not signalled; the message says how to bring it back.
        refused = cli("stop", str(victim))
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1
        assert f"restart {victim}" in refused.stderr

        back = cli("up")
        assert back.returncode == 0, back.stderr
        assert f"back: {victim}" in back.stderr
        new_pids = recorded_pids(directory)
        pids.append(new_pids[5])
        assert new_pids[:5] == pids[:5]
        assert ask(victim, b"PING") == b"+PONG"
        assert ask_info(base, b"CLUSTER", b"INFO")["cluster_state"] == "ok"

        frozen = cli("stop", str(base + 1))
        assert frozen.returncode == 0, frozen.stderr
        assert "frozen" in cli("status").stdout
        silent = Node(base + 1, timeout=0.3)
        try:
            with pytest.raises(TimeoutError):
                silent.call(b"PING")
        finally:
            silent.close()
        assert cli("cont", str(base + 1)).returncode == 0
        assert ask(base + 1, b"PING") == b"+PONG"

        restarted = cli("restart", str(base + 2))
        assert restarted.returncode == 0, restarted.stderr
        pids.append(recorded_pids(directory)[2])
        assert pids[-1] != pids[2]
        assert ask(base + 2, b"PING") == b"+PONG"

        unknown = cli("kill", "1")
        assert unknown.returncode == 1
        assert unknown.stderr.count("\n") == 1
        assert "not a node" in unknown.stderr
        assert cli("down").returncode == 0
    finally:
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_server_that_cannot_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    base = free_port_block(6)
    # A file where the first node's directory must go: its server cannot start there.
    directory = tmp_path / "cluster"
    directory.mkdir()
    (directory / str(base)).write_text("not a directory")
    failed = run_cli_process("up", "--port", str(base), "--dir", str(directory))
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("pitchey-cache local-cluster up: ")
    assert not busy_ports(range(base, base + 6))


def test_cli_reports_failures_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_local_cluster_command(["status", "--dir", str(tmp_path)], {}) == 1
    assert "no local cluster recorded" in capsys.readouterr().err
    assert run_local_cluster_command(["up", "--masters", "2", "--dir", str(tmp_path)], {}) == 1
    assert "at least 3" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The Docker Compose file


def _compose_client() -> list[str] | None:
    """`docker compose` if the plugin is installed, else `docker-compose`, else None."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(
            ["docker", "compose", "version"],  # noqa: S607 - whichever docker is on PATH
            capture_output=True,
            check=False,
            timeout=30,
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    # v1 is a Python program that takes a second or two to start; finding it is enough.
    return ["docker-compose"] if shutil.which("docker-compose") is not None else None


def test_compose_file_parses_with_six_announced_nodes_and_a_setup_service() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip(
            "no Docker Compose client: neither the `docker compose` plugin nor "
            "`docker-compose` is installed (no engine is needed, only the client)"
        )
    env = {**os.environ, "REDIS_CLUSTER_PASSWORD": "compose-check"}
    base = [*client, "-f", str(COMPOSE_FILE)]
    config = subprocess.run(  # noqa: S603 - the compose client found above
        [*base, "config"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert config.returncode == 0, config.stderr
    text = config.stdout
    services = [line.strip() for line in text.splitlines() if line.startswith("  redis-")]
    assert sorted(services) == ["redis-cluster-setup:", *(f"redis-node-{n}:" for n in range(1, 7))]
    assert text.count("network_mode: host") == 7
    assert text.count("condition: service_healthy") == 6
    assert text.count("redis-cli -p") >= 6  # each node's healthcheck pings it
    assert "--cluster-replicas 1 --cluster-yes" in text
    assert "cluster_state:ok" in text
    for port in range(7001, 7007):
        assert f"NODE_PORT: '{port}'" in text or f'NODE_PORT: "{port}"' in text
    assert "--cluster-announce-bus-port" in text
    # A cache serves the shards it has: one shard without a master must not stop the rest.
    assert "--cluster-require-full-coverage no" in text
    # The password is interpolated into the environment, never into a command.
    assert "REDIS_CLUSTER_PASSWORD: compose-check" in text
    assert text.count("compose-check") == 7
