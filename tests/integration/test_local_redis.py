"""The launcher behind every integration test: real outages, seen over a raw socket."""

from __future__ import annotations

import os
import socket
import time

import pytest

from pitchey_cache.devtools.local_redis import RedisServer
from tests.integration.conftest import RedisServerFactory

pytestmark = pytest.mark.integration

PASSWORD = 'correct horse "battery" \\staple'


def send(server: RedisServer, *commands: list[bytes], timeout: float = 2.0) -> list[bytes]:
    """Send RESP commands over a fresh connection; return one-line replies, CRLF stripped.

    Written independently of the launcher's own readiness probe, so the tests do not
    trust the code they check.
    """
    payload = b""
    for parts in commands:
        payload += b"*%d\r\n" % len(parts)
        for part in parts:
            payload += b"$%d\r\n%s\r\n" % (len(part), part)
    with socket.create_connection((server.host, server.port), timeout=timeout) as conn:
        conn.sendall(payload)
        received = b""
        while received.count(b"\r\n") < len(commands):
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n")[: len(commands)]


def ping(server: RedisServer, timeout: float = 2.0) -> bytes:
    return send(server, [b"PING"], timeout=timeout)[0]


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_started_server_answers_ping_on_loopback(redis_server: RedisServer) -> None:
    assert redis_server.address == f"127.0.0.1:{redis_server.port}"
    assert redis_server.pid is not None
    assert ping(redis_server) == b"+PONG"
    assert "running" in repr(redis_server)


def test_kill_makes_the_port_refuse_connections(redis_server: RedisServer) -> None:
    redis_server.kill()

    assert redis_server.pid is None
    with pytest.raises(ConnectionRefusedError):
        ping(redis_server)


def test_restart_after_kill_serves_again_on_the_same_port(redis_server: RedisServer) -> None:
    port, old_pid = redis_server.port, redis_server.pid
    redis_server.kill()

    redis_server.restart()

    assert redis_server.port == port
    assert redis_server.pid not in (None, old_pid)
    assert ping(redis_server) == b"+PONG"


def test_paused_server_times_out_and_answers_after_resume(redis_server: RedisServer) -> None:
    redis_server.pause()

    assert "paused" in repr(redis_server)
    # The kernel still completes the TCP handshake, so a frozen server looks like a
    # slow one, not a refused port.
    with pytest.raises(TimeoutError):
        ping(redis_server, timeout=0.3)

    redis_server.resume()
    assert ping(redis_server) == b"+PONG"


def test_password_server_refuses_unauthenticated_ping(
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory(password=PASSWORD)

    assert ping(server).startswith(b"-NOAUTH")
    assert send(server, [b"AUTH", PASSWORD.encode()], [b"PING"]) == [b"+OK", b"+PONG"]
    assert PASSWORD not in repr(server)


def test_failed_start_reports_the_log_but_never_the_password(
    redis_server_factory: RedisServerFactory,
) -> None:
    running = redis_server_factory()
    # Same port as a running server: the second one cannot bind.
    clash = RedisServer(running.port, workdir=running.workdir.parent / "clash", password=PASSWORD)

    with pytest.raises(RuntimeError) as excinfo:
        clash.start(timeout=5.0)

    message = str(excinfo.value)
    assert "Address already in use" in message
    assert PASSWORD not in message
    assert clash.pid is None
    assert ping(running) == b"+PONG"


def test_stop_leaves_no_process_behind(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    assert pid is not None

    redis_server.stop()

    assert redis_server.pid is None
    assert not process_exists(pid)
    with pytest.raises(ConnectionRefusedError):
        ping(redis_server)


def test_stop_shuts_down_a_paused_server_gracefully(redis_server: RedisServer) -> None:
    redis_server.pause()
    started = time.monotonic()

    redis_server.stop()

    # Well under the 5 s grace period: SIGTERM was handled, not left pending.
    assert time.monotonic() - started < 2.0
    assert redis_server.pid is None
    assert "ready to exit" in redis_server.logfile.read_text()
