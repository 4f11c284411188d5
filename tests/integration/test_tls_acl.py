"""TLS to Redis, and least-privilege ACL users, proven against real redis-server processes.

Certificates are made here, by a throwaway CA (openssl, ECDSA P-256), for
127.0.0.1. Servers speak TLS only (``--port 0 --tls-port P``); cluster nodes also
replicate and gossip over TLS. What the servers hold and refuse is checked with a
small RESP client written here, independently of the code under test.

Glide reports every TLS failure (unknown CA, missing client certificate, plaintext
to a TLS port and TLS to a plaintext one) as a connect failure that says only "timed
out"; the tier's probe then asks the server with Python's ssl module, and these tests
hold it to naming the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from pitchey_cache import Cache, Secret, Settings
from pitchey_cache.config import NodeAddress
from pitchey_cache.devtools.local_cluster import LocalCluster, free_port_block
from pitchey_cache.devtools.local_redis import (
    LOOPBACK,
    LocalCertificateAuthority,
    RedisServer,
    ServerTls,
)

# The least-privilege ACL the README recommends, for the default prefix. The
# commands are the ones the tiers send (EVALSHA, and SCRIPT LOAD once per server,
# release get_or_set's lock), and the ones glide sends on connect: HELLO
# (always allowed), CLIENT SETNAME, and on a standalone server INFO REPLICATION (to
# find the primary); the cluster client reads CLUSTER SLOTS, the health probe CLUSTER
# NODES and CLUSTER INFO.
CACHE_ACL = (
    "~pitchey:* resetchannels -@all "
    "+get +set +mget +del +unlink +exists +expire +ttl +incrby +scan +ping +evalsha +script|load "
    "+client|setname +info|replication"
)
CLUSTER_CACHE_ACL = (
    "~pitchey:* resetchannels -@all "
    "+get +set +mget +del +unlink +exists +expire +ttl +incrby +scan +ping +evalsha +script|load "
    "+client|setname +cluster|slots +cluster|nodes +cluster|info"
)
CACHE_USER = "pitchey-cache"
CACHE_PASSWORD = "acl-pw-Hq3-never-shown-5519"
WRONG_PASSWORD = "acl-wrong-pw-Zt7-never-shown-8823"
ADMIN_PASSWORD = "admin-pw-Lk2-never-shown-4410"

# Glide reports a failed connection after REDIS_CONNECT_TIMEOUT, so the tests that
# expect one keep it short; those that expect success leave room for a busy machine.
FAILING = {"connect_timeout_ms": 1000, "command_timeout_ms": 1000}
PATIENT = {"connect_timeout_ms": 3000, "command_timeout_ms": 3000}
OWN_PREFIXES = ("REDIS_", "CACHE_", "UPSTASH_")


# ---------------------------------------------------------------------------
# A minimal RESP client, plaintext or TLS


class ReplyError(Exception):
    """An error reply (``-NOPERM ...``)."""


class Resp:
    """One connection to one server; RESP2 replies as Python values, errors raised."""

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((LOOPBACK, port), timeout=3.0)
        try:
            self._sock = (
                sock if context is None else context.wrap_socket(sock, server_hostname=LOOPBACK)
            )
        except BaseException:
            sock.close()
            raise
        self._file = self._sock.makefile("rb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        self._sock.close()

    def call(self, *parts: str | bytes) -> Any:
        encoded = [p.encode() if isinstance(p, str) else p for p in parts]
        payload = b"*%d\r\n" % len(encoded)
        for part in encoded:
            payload += b"$%d\r\n%s\r\n" % (len(part), part)
        self._sock.sendall(payload)
        return self._reply()

    def _reply(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("the server closed the connection without a reply")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise AssertionError(f"unexpected reply {line!r}")


# ---------------------------------------------------------------------------
# Certificates and servers


@dataclass(frozen=True)
class Pki:
    ca: LocalCertificateAuthority
    server: ServerTls  # tls-auth-clients no
    mutual: ServerTls  # tls-auth-clients yes, same certificate
    client: tuple[Path, Path]  # issued by ``ca``
    other_ca: LocalCertificateAuthority
    stranger: tuple[Path, Path]  # a client certificate issued by ``other_ca``

    def context(self) -> ssl.SSLContext:
        """What a trusted client of these servers uses (also enough for mutual TLS)."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.load_cert_chain(str(self.client[0]), str(self.client[1]))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = LocalCertificateAuthority(tmp_path_factory.mktemp("pki"), name="test CA")
    other = LocalCertificateAuthority(tmp_path_factory.mktemp("other-pki"), name="other CA")
    server = ca.server_tls("redis")
    return Pki(
        ca=ca,
        server=server,
        mutual=ServerTls(cert=server.cert, key=server.key, ca_cert=ca.cert, auth_clients=True),
        client=ca.issue("pitchey-cache-client"),
        other_ca=other,
        stranger=other.issue("stranger"),
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path_factory.mktemp("tls-redis"), tls=pki.server) as server:
        yield server


@pytest.fixture(scope="module")
def mutual_tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path_factory.mktemp("mtls-redis"), tls=pki.mutual) as server:
        yield server


def single(server: RedisServer, **overrides: Any) -> Settings:
    return Settings(redis_host=server.host, redis_port=server.port, **{**PATIENT, **overrides})


async def first_node(cache: Cache) -> dict[str, Any]:
    node: dict[str, Any] = (await cache.stats())["tiers"][0]["nodes"][0]
    return node


# ---------------------------------------------------------------------------
# TLS to one server


async def test_the_right_ca_connects_and_serves(tls_server: RedisServer, pki: Pki) -> None:
    settings = single(tls_server, tls_enabled=True, tls_ca_cert=pki.ca.cert)
    async with Cache(settings) as cache:
        assert cache.active_tier == "native-redis"
        assert cache.status() == "healthy"
        assert await cache.set("tls:greeting", {"over": "tls"}, ttl=60)
        assert await cache.get("tls:greeting") == {"over": "tls"}
    with Resp(tls_server.port, context=pki.context()) as redis:
        assert redis.call("GET", "pitchey:tls:greeting") == b'{"over":"tls"}'


@pytest.mark.parametrize("trusted", ["another CA", "the system store"])
async def test_an_unknown_ca_is_refused_and_named(
    tls_server: RedisServer, pki: Pki, trusted: str
) -> None:
    ca = pki.other_ca.cert if trusted == "another CA" else None
    settings = single(tls_server, tls_enabled=True, tls_ca_cert=ca, **FAILING)
    async with Cache(settings) as cache:
        assert cache.active_tier == "in-memory"
        assert cache.status() == "degraded"
        node = await first_node(cache)
        assert not node["healthy"]
        assert node["lastError"].startswith("TLS: certificate verify failed (unknown CA")
        assert ("REDIS_TLS_CA_CERT (" if ca else "system store") in node["lastError"]
        # Served from memory meanwhile: nothing reaches the caller.
        assert await cache.set("k", 1)
        assert await cache.get("k") == 1


async def test_insecure_connects_to_a_server_of_an_unknown_ca(tls_server: RedisServer) -> None:
    # REDIS_TLS_INSECURE: encrypted, but anyone in the middle can pose as the server.
    async with Cache(single(tls_server, tls_enabled=True, tls_insecure=True)) as cache:
        assert cache.active_tier == "native-redis"
        assert cache.status() == "healthy"
        assert await cache.incr("tls:insecure") == 1


async def test_plaintext_to_the_tls_port_is_refused_and_named(tls_server: RedisServer) -> None:
    with Resp(tls_server.port) as plaintext, pytest.raises(ConnectionError):
        plaintext.call("PING")
    async with Cache(single(tls_server, **FAILING)) as cache:
        assert cache.active_tier == "in-memory"
        node = await first_node(cache)
        assert node["lastError"].startswith(
            f"TLS: {tls_server.address} accepts only TLS connections; set REDIS_TLS_ENABLED=true"
        )


async def test_tls_to_a_plaintext_port_is_named(redis_server: RedisServer, pki: Pki) -> None:
    settings = single(redis_server, tls_enabled=True, tls_ca_cert=pki.ca.cert, **FAILING)
    async with Cache(settings) as cache:
        assert cache.active_tier == "in-memory"
        node = await first_node(cache)
        assert node["lastError"].startswith(
            f"TLS: {redis_server.address} answered in plaintext, not TLS"
        )


async def test_mutual_tls_works_with_the_client_certificate(
    mutual_tls_server: RedisServer, pki: Pki
) -> None:
    cert, key = pki.client
    settings = single(
        mutual_tls_server, tls_enabled=True, tls_ca_cert=pki.ca.cert, tls_cert=cert, tls_key=key
    )
    async with Cache(settings) as cache:
        assert cache.status() == "healthy"
        assert await cache.set("mtls", "yes")
        assert await cache.get("mtls") == "yes"


@pytest.mark.parametrize("client", ["no certificate", "a certificate of another CA"])
async def test_mutual_tls_without_an_accepted_certificate_is_named(
    mutual_tls_server: RedisServer, pki: Pki, client: str
) -> None:
    cert, key = pki.stranger if client != "no certificate" else (None, None)
    settings = single(
        mutual_tls_server,
        tls_enabled=True,
        tls_ca_cert=pki.ca.cert,
        tls_cert=cert,
        tls_key=key,
        **FAILING,
    )
    async with Cache(settings) as cache:
        assert cache.active_tier == "in-memory"
        error = (await first_node(cache))["lastError"]
        assert error.startswith(f"TLS: {mutual_tls_server.address} ")
        if cert is None:
            assert "requires a client certificate" in error
            assert "set REDIS_TLS_CERT and REDIS_TLS_KEY" in error
        else:
            assert "refused the client certificate of REDIS_TLS_CERT" in error


# ---------------------------------------------------------------------------
# `pitchey-cache check`, as a user runs it


def clean_environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(REDIS_CONNECT_TIMEOUT="1000", REDIS_COMMAND_TIMEOUT="1000")
    env.update(variables)
    return env


def pitchey_cache(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Our own interpreter and module, with an argument list built here; no shell.
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pitchey_cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_names_the_unknown_ca(tmp_path: Path, tls_server: RedisServer, pki: Pki) -> None:
    env = clean_environment(
        REDIS_HOST=tls_server.host,
        REDIS_PORT=str(tls_server.port),
        REDIS_TLS_ENABLED="true",
        REDIS_TLS_CA_CERT=str(pki.other_ca.cert),
    )
    unknown = pitchey_cache(tmp_path, env, "check")
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert f"native-redis {tls_server.address}/0: UNREACHABLE" in unknown.stdout
    assert (
        f"server {tls_server.address}: UNREACHABLE: TLS: certificate verify failed (unknown CA"
        in unknown.stdout
    )
    trusted = pitchey_cache(tmp_path, {**env, "REDIS_TLS_CA_CERT": str(pki.ca.cert)}, "check")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert f"native-redis {tls_server.address}/0: ok" in trusted.stdout


# ---------------------------------------------------------------------------
# TLS to a cluster


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        workdir=tmp_path_factory.mktemp("tls-cluster"),
        base_port=free_port_block(6),
        tls=pki.server,
    )
    try:
        cluster.start(timeout=40)
        put_in_service(cluster, pki)
        yield cluster
    finally:
        cluster.stop()


def put_in_service(cluster: LocalCluster, pki: Pki, within: float = 10.0) -> None:
    """Replicate a write on every shard, then wait until every node's CLUSTER SLOTS lists
    every node.

    Redis 7.0 leaves a replica that never replicated anything out of CLUSTER SLOTS,
    so glide would know no replica of a cluster that never took a write (the cluster
    tests cover that case; here the subject is TLS).
    """
    for port in cluster.ports:
        with Resp(port, context=pki.context()) as node:
            if b"role:master" in node.call("INFO", "replication"):
                node.call("FLUSHALL")
    deadline = time.monotonic() + within
    while True:
        views = {}
        for port in cluster.ports:
            with Resp(port, context=pki.context()) as node:
                shards = node.call("CLUSTER", "SLOTS")
            views[port] = {int(n[1]) for shard in shards for n in shard[2:]}
        if all(listed == set(cluster.ports) for listed in views.values()):
            return
        assert time.monotonic() < deadline, f"CLUSTER SLOTS of each node lists only {views}"
        time.sleep(0.05)


def cluster_settings(cluster: LocalCluster, pki: Pki, **overrides: Any) -> Settings:
    return Settings(
        cluster_enabled=True,
        cluster_nodes=tuple(NodeAddress(LOOPBACK, port) for port in cluster.ports),
        tls_enabled=True,
        **{"tls_ca_cert": pki.ca.cert, **PATIENT, **overrides},
    )


async def test_a_tls_cluster_serves_keys_on_every_master(
    tls_cluster: LocalCluster, pki: Pki
) -> None:
    masters = [n.port for n in tls_cluster.nodes() if n.role == "master"]
    replicas = [n.port for n in tls_cluster.nodes() if n.role == "replica"]
    assert len(masters) == 3
    assert len(replicas) == 3
    for port in replicas:
        # Replication runs over TLS (the nodes have no plaintext port at all).
        with Resp(port, context=pki.context()) as node:
            assert b"master_link_status:up" in node.call("INFO", "replication")
    async with Cache(cluster_settings(tls_cluster, pki)) as cache:
        assert cache.active_tier == "redis-cluster"
        assert cache.status() == "healthy"
        info = await cache.cluster_info()
        assert info["healthyNodes"] == 6
        assert info["clusterState"] == "ok"
        values = {f"tls-cluster:{i}": i for i in range(60)}
        await cache.set_many(values, ttl=60)
        assert await cache.get_many(values) == values
        assert (await cache.stats())["tiers"][0]["operations"]["failed"] == 0
    for port in masters:
        with Resp(port, context=pki.context()) as node:
            assert node.call("DBSIZE") > 0, f"master {port} holds none of the keys"


async def test_an_unknown_ca_is_named_for_the_cluster_too(
    tls_cluster: LocalCluster, pki: Pki
) -> None:
    settings = cluster_settings(tls_cluster, pki, tls_ca_cert=pki.other_ca.cert, **FAILING)
    async with Cache(settings) as cache:
        assert cache.active_tier == "in-memory"
        info = await cache.cluster_info()
        assert info["healthyNodes"] == 0
        for node in info["nodes"]:
            assert node["lastError"].startswith("TLS: certificate verify failed (unknown CA")


def read_exports(stdout: str) -> dict[str, str]:
    """`up` prints `export NAME=value` lines, values quoted for a shell."""
    exports = {}
    for line in stdout.splitlines():
        assert line.startswith("export "), line
        (assignment,) = shlex.split(line.removeprefix("export "))
        name, value = assignment.split("=", 1)
        exports[name] = value
    return exports


def test_local_cluster_up_tls_check_and_down(tmp_path: Path) -> None:
    directory = tmp_path / "local-cluster"
    base = free_port_block(6)
    up = subprocess.run(  # noqa: S603 - the test's own interpreter and module
        [
            sys.executable, "-m", "pitchey_cache.devtools.local_cluster", "up", "--tls",
            "--port", str(base), "--dir", str(directory),
        ],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    state_path = directory / "local-cluster.json"
    record = json.loads(state_path.read_text()) if state_path.exists() else {"nodes": []}
    pids = [node["pid"] for node in record["nodes"]]
    try:
        assert up.returncode == 0, up.stderr
        exports = read_exports(up.stdout)
        ca = directory.resolve() / "tls" / "ca.crt"
        assert exports == {
            "REDIS_CLUSTER_ENABLED": "true",
            "REDIS_CLUSTER_NODES": ",".join(f"{LOOPBACK}:{p}" for p in range(base, base + 6)),
            "REDIS_TLS_ENABLED": "true",
            "REDIS_TLS_CA_CERT": str(ca),
        }
        assert "TLS only" in up.stderr
        # No plaintext anywhere: a plaintext PING to a node gets no answer.
        with Resp(base) as plaintext, pytest.raises(ConnectionError):
            plaintext.call("PING")

        check = pitchey_cache(tmp_path, clean_environment(**exports), "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "redis-cluster seeds" in check.stdout
        assert ": ok" in check.stdout

        status = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "pitchey_cache.devtools.local_cluster", "status",
             "--dir", str(directory)],
            env=clean_environment(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert "TLS only" in status.stdout
        assert "cluster_state: ok" in status.stdout

        down = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "pitchey_cache.devtools.local_cluster", "down",
             "--dir", str(directory)],
            env=clean_environment(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stdout + down.stderr
        assert all(f"stopped pid {pid}" in down.stdout for pid in pids)
        assert not state_path.exists()
        with pytest.raises(ConnectionRefusedError):
            Resp(base)
    finally:
        # Only if `down` failed: what `up` started must not outlive the test.
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"redis-server"):
                    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# ACL users


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server whose default user needs a password, with a least-privilege user for the cache."""
    server = RedisServer(workdir=tmp_path_factory.mktemp("acl-redis"), password=ADMIN_PASSWORD)
    with server:
        with admin(server) as redis:
            redis.call("ACL", "SETUSER", CACHE_USER, *user_rules(CACHE_ACL))
        yield server


def user_rules(acl: str) -> list[str]:
    """An ACL SETUSER's arguments: a fresh user, enabled, with the cache's password."""
    return ["reset", "on", f">{CACHE_PASSWORD}", *acl.split()]


def admin(server: RedisServer) -> Resp:
    redis = Resp(server.port)
    assert redis.call("AUTH", ADMIN_PASSWORD) == "OK"
    return redis


@pytest.fixture
def acl_log(acl_server: RedisServer) -> None:
    """Every test starts with an empty ACL log and database."""
    with admin(acl_server) as redis:
        redis.call("ACL", "LOG", "RESET")
        redis.call("FLUSHALL")


def denials(server: RedisServer) -> list[str]:
    """What the ACL refused since the last reset, as ``reason: object`` lines."""
    with admin(server) as redis:
        entries = redis.call("ACL", "LOG")
    out = []
    for entry in entries:
        fields = dict(zip(entry[::2], entry[1::2], strict=True))
        out.append(f"{fields[b'reason'].decode()}: {fields[b'object'].decode()}")
    return out


def as_cache_user(**overrides: Any) -> dict[str, Any]:
    return {"redis_username": CACHE_USER, "redis_password": Secret(CACHE_PASSWORD), **overrides}


@pytest.mark.usefixtures("acl_log")
async def test_the_cache_works_with_exactly_the_recommended_acl(acl_server: RedisServer) -> None:
    async with Cache(single(acl_server, **as_cache_user())) as cache:
        assert cache.active_tier == "native-redis"
        assert await cache.set("pitch:1", {"title": "Heat"}, ttl=600)
        assert await cache.set("seen:1", 1, ttl=60, only_if_absent=True)
        assert not await cache.set("seen:1", 1, ttl=60, only_if_absent=True)
        assert await cache.get("pitch:1") == {"title": "Heat"}
        await cache.set_many({"a": 1, "b": b"\x00bytes"}, ttl=60)
        assert await cache.get_many(["a", "b", "c"]) == {"a": 1, "b": b"\x00bytes"}
        assert await cache.exists("a")
        assert await cache.expire("a", 120)
        assert 0 < await cache.ttl("a") <= 120
        assert await cache.incr("views:1", 5) == 5
        assert await cache.get_or_set("loaded", _load_value, ttl=60) == "loaded value"
        assert await cache.get_or_set("locked", _load_value, 60, lock=True, tags=["t"]) == (
            "loaded value"
        )
        await cache.invalidate_tags("t")
        assert await cache.get("locked") is None
        assert await cache.delete("a", "b") == 2
        assert await cache.delete_pattern("seen:*") == 1
        stats = await cache.stats()
        assert stats["tiers"][0]["operations"]["failed"] == 0, (
            stats["events"],
            denials(acl_server),
        )
        assert cache.status() == "healthy"
    # Nothing the cache sent, on connect or after, was refused.
    assert denials(acl_server) == []


async def _load_value() -> str:
    return "loaded value"


@pytest.mark.usefixtures("acl_log")
def test_the_acl_confines_the_user_to_the_prefix_and_the_cache_commands(
    acl_server: RedisServer,
) -> None:
    with Resp(acl_server.port) as redis:
        assert redis.call("AUTH", CACHE_USER, CACHE_PASSWORD) == "OK"
        assert redis.call("SET", "pitchey:mine", "1") == "OK"
        for command in (
            ("SET", "other:key", "1"),
            ("GET", "other:key"),
            ("FLUSHALL",),
            ("KEYS", "*"),
            ("CONFIG", "GET", "requirepass"),
            ("EVAL", "return 1", "0"),
            ("INFO", "server"),
            ("ACL", "LIST"),
            ("SUBSCRIBE", "pitchey:channel"),
        ):
            with pytest.raises(ReplyError, match=r"^NOPERM"):
                redis.call(*command)
    refused = denials(acl_server)
    for denial in (
        "key: other:key",
        "command: flushall",
        "command: keys",
        "command: config|get",
        "command: eval",
        "command: info",
        "command: acl|list",
        "command: subscribe",
    ):
        assert denial in refused


@pytest.mark.usefixtures("acl_log")
async def test_a_prefix_outside_the_acl_is_refused_and_served_from_memory(
    acl_server: RedisServer,
) -> None:
    async with Cache(single(acl_server, key_prefix="other", **as_cache_user())) as cache:
        assert await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert (await cache.stats())["tiers"][0]["operations"]["failed"] >= 1
    with admin(acl_server) as redis:
        assert redis.call("EXISTS", "other:k") == 0
    assert "key: other:k" in denials(acl_server)


@pytest.mark.usefixtures("acl_log")
async def test_a_wrong_password_is_unhealthy_and_never_shown(
    tmp_path: Path, acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = single(acl_server, **as_cache_user(redis_password=Secret(WRONG_PASSWORD)))
    async with Cache(settings) as cache:
        assert cache.active_tier == "in-memory"
        assert await cache.set("k", 1)
        node = await first_node(cache)
        assert not node["healthy"]
        assert "WRONGPASS" in node["lastError"]
        shown = json.dumps([await cache.health(), await cache.stats()]) + repr(cache)
    env = clean_environment(
        REDIS_HOST=acl_server.host,
        REDIS_PORT=str(acl_server.port),
        REDIS_USERNAME=CACHE_USER,
        REDIS_PASSWORD=WRONG_PASSWORD,
    )
    check = pitchey_cache(tmp_path, env, "check")
    assert check.returncode == 1
    assert "WRONGPASS" in check.stdout
    for text in (shown, caplog.text, check.stdout + check.stderr):
        assert WRONG_PASSWORD not in text
        assert CACHE_PASSWORD not in text


@pytest.mark.usefixtures("acl_log")
async def test_no_credentials_is_noauth_and_unhealthy(acl_server: RedisServer) -> None:
    async with Cache(single(acl_server, **FAILING)) as cache:
        assert cache.active_tier == "in-memory"
        node = await first_node(cache)
        assert not node["healthy"]
        assert "NOAUTH" in node["lastError"]


@pytest.mark.usefixtures("acl_log")
async def test_an_acl_without_info_keeps_glide_from_connecting(acl_server: RedisServer) -> None:
    # The ACL the issue first suggested: INFO is in @dangerous, so `-@dangerous` takes
    # it away again, and glide's standalone client asks INFO REPLICATION on connect.
    with admin(acl_server) as redis:
        broad = "~pitchey:* +@read +@write +@connection +scan +info +ping -@dangerous"
        redis.call("ACL", "SETUSER", "broad", *user_rules(broad))
    try:
        settings = single(acl_server, **as_cache_user(redis_username="broad"), **FAILING)
        async with Cache(settings) as cache:
            assert cache.active_tier == "in-memory"
            assert (
                "no permissions to run the 'info' command" in (await first_node(cache))["lastError"]
            )
    finally:
        with admin(acl_server) as redis:
            redis.call("ACL", "DELUSER", "broad")


async def test_a_cluster_acl_user_over_tls(tls_cluster: LocalCluster, pki: Pki) -> None:
    # ACLs are per node and not replicated: every node, replicas too, needs the user.
    for port in tls_cluster.ports:
        with Resp(port, context=pki.context()) as node:
            node.call("ACL", "SETUSER", CACHE_USER, *user_rules(CLUSTER_CACHE_ACL))
            node.call("ACL", "LOG", "RESET")
    try:
        settings = cluster_settings(
            tls_cluster, pki, cluster_username=CACHE_USER, cluster_password=Secret(CACHE_PASSWORD)
        )
        async with Cache(settings) as cache:
            assert cache.status() == "healthy"
            values = {f"acl:{i}": i for i in range(30)}
            await cache.set_many(values, ttl=60)
            assert await cache.get_many(values) == values
            assert await cache.incr("acl:counter") == 1
            assert await cache.delete_pattern("acl:*") == 31
            assert (await cache.stats())["tiers"][0]["operations"]["failed"] == 0
        for port in tls_cluster.ports:
            with Resp(port, context=pki.context()) as node:
                assert node.call("ACL", "LOG") == [], f"node {port} refused a command"
    finally:
        for port in tls_cluster.ports:
            with Resp(port, context=pki.context()) as node:
                node.call("ACL", "DELUSER", CACHE_USER)
