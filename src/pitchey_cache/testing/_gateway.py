"""The development gateway, behind a :class:`GatewayTap`, in a process of its own.

A gateway served from a thread of the test process shares its GIL with the test: a test
that keeps the CPU busy (concurrent traffic on the in-memory tier, say) delays every
answer the gateway gives, and a healed gateway then looks down for seconds. In a
process of its own it answers as a real endpoint would.

The test process starts one child, which imports the gateway and waits; each
:meth:`GatewayProcess.start` has it fork a server, which listens on the port. So a
restart takes milliseconds, as a real server's would, and stopping one is ``SIGTERM``
to the server's own PID (uvicorn shuts down gracefully: the port refuses connections
at once). The child reaps the server and says so; until then the PID cannot be reused.

The test process drives them through the child's stdin and stdout, one line each way:
a command (``listen``, ``fault hang``, ``requests``) and a JSON reply; a server answers
on the same pipes while it runs, the child waiting meanwhile. The pipes belong to these
processes alone, so the control needs no secret of its own; the bearer token reaches
the child in its environment, never on its command line.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any, Final, Self

from pitchey_cache.devtools.local_redis import LOOPBACK, free_port
from pitchey_cache.testing._http import Exchange, Fault, GatewayTap

_TOKEN_VARIABLE: Final = "UPSTASH_REDIS_REST_TOKEN"  # noqa: S105 - a variable name
_START_TIMEOUT_S: Final = 30.0
_REPLY_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 10.0


class GatewayProcess:
    """The gateway in front of the Redis at ``redis_address``, in a process of its own
    on a free loopback port that is kept across :meth:`stop` and :meth:`start`.

    ``fault`` is the tap's (:class:`Fault`): setting it returns once the server applies
    it. :meth:`requests` lists every exchange since the first start, across restarts.
    """

    def __init__(self, redis_address: str, token: str) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._redis_address = redis_address
        self._token = token
        self._fault = Fault.NONE
        self._launcher: subprocess.Popen[bytes] | None = None
        self._server_pid: int | None = None
        self._earlier: list[Exchange] = []
        # One command and its reply at a time: the drills switch faults from a thread.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"pid {self._server_pid}" if self._server_pid else "stopped"
        return f"<GatewayProcess {self.url} {state} fault={self._fault}>"

    @property
    def fault(self) -> Fault:
        return self._fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        self._fault = fault
        if self._server_pid is not None:
            self._command(f"fault {fault.value}", _REPLY_TIMEOUT_S)

    def requests(self) -> list[Exchange]:
        """Every request the gateway was sent so far, with what it answered."""
        if self._server_pid is None:
            return list(self._earlier)
        return self._earlier + self._fetch_requests()

    def start(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Listen on the port (a no-op if listening); return once it accepts requests."""
        if self._server_pid is not None:
            return
        if self._launcher is None:
            self._launcher = self._spawn()
        reply = self._command("listen", timeout)
        if "listening" not in reply:
            raise RuntimeError(
                f"the gateway did not start on {self.url}: its server exited with code "
                f"{reply.get('stopped')} (its stderr says why)"
            )
        self._server_pid = reply["listening"]
        if self._fault is not Fault.NONE:
            self._command(f"fault {self._fault.value}", _REPLY_TIMEOUT_S)

    def stop(self) -> None:
        """Shut the server down: it stops listening, so new connections are refused."""
        pid, self._server_pid = self._server_pid, None
        if pid is None:
            return
        try:
            self._earlier += self._fetch_requests()
        finally:
            os.kill(pid, signal.SIGTERM)
            try:
                self._receive("stop", _STOP_TIMEOUT_S)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._receive("stop", _STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop the server, and the process that starts servers."""
        try:
            self.stop()
        finally:
            launcher, self._launcher = self._launcher, None
            if launcher is not None:
                _end(launcher)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", __name__, "--redis", self._redis_address]
        return subprocess.Popen(  # noqa: S603 - this interpreter, our own module
            [*command, "--port", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, _TOKEN_VARIABLE: self._token},
        )

    def _fetch_requests(self) -> list[Exchange]:
        reply = self._command("requests", _REPLY_TIMEOUT_S)
        return [_exchange(item) for item in reply["requests"]]

    def _command(self, line: str, timeout: float) -> Any:
        launcher = self._launcher
        assert launcher is not None  # noqa: S101 - started before any command
        assert launcher.stdin is not None  # noqa: S101 - piped
        with self._lock:
            try:
                launcher.stdin.write(line.encode() + b"\n")
                launcher.stdin.flush()
            except BrokenPipeError:
                raise _exited(launcher, line) from None
            return self._receive(line, timeout)

    def _receive(self, line: str, timeout: float) -> Any:
        launcher = self._launcher
        assert launcher is not None  # noqa: S101 - started before any command
        assert launcher.stdout is not None  # noqa: S101 - piped
        # One reply per command, written whole: the reader's buffer is empty here, so
        # select() on the pipe sees whether the reply has begun.
        ready, _, _ = select.select([launcher.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(
                f"the gateway process (pid {launcher.pid}) did not answer {_name(line)!r} "
                f"within {timeout:g}s"
            )
        reply = launcher.stdout.readline()
        if not reply:
            raise _exited(launcher, line)
        message = json.loads(reply)
        if "error" in message:
            raise RuntimeError(f"the gateway process: {message['error']}")
        return message


def _end(launcher: subprocess.Popen[bytes]) -> None:
    """End the launcher: it exits when its stdin closes; a signal if it does not."""
    assert launcher.stdin is not None  # noqa: S101 - piped
    assert launcher.stdout is not None  # noqa: S101 - piped
    with contextlib.suppress(BrokenPipeError):
        launcher.stdin.close()
    try:
        launcher.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
    launcher.stdout.close()


def _exited(launcher: subprocess.Popen[bytes], line: str) -> RuntimeError:
    code = launcher.wait(timeout=_STOP_TIMEOUT_S)
    return RuntimeError(
        f"the gateway process (pid {launcher.pid}) exited with code {code} "
        f"before answering {_name(line)!r} (its stderr says why)"
    )


def _name(command: str) -> str:
    return command.partition(" ")[0]


def _exchange(item: dict[str, Any]) -> Exchange:
    client = item["client"]
    return Exchange(
        method=item["method"],
        path=item["path"],
        query=item["query"],
        headers=item["headers"],
        client=(client[0], client[1]) if client else None,
        body=base64.b64decode(item["body"]),
        status=item["status"],
        response_headers=item["response_headers"],
    )


def _exchange_json(exchange: Exchange) -> dict[str, Any]:
    return {
        "method": exchange.method,
        "path": exchange.path,
        "query": exchange.query,
        "headers": exchange.headers,
        "client": exchange.client,
        "body": base64.b64encode(exchange.body).decode(),
        "status": exchange.status,
        "response_headers": exchange.response_headers,
    }


# ---------------------------------------------------------------------------
# The child


def _serve(argv: Sequence[str]) -> int:
    """The launcher: load the gateway, then fork a server for each ``listen``."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--redis", required=True, help="host:port of the Redis behind it")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    token = os.environ.get(_TOKEN_VARIABLE, "")
    # Replies go to the parent on the original stdout; anything else that would print
    # there (a library's notice) goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    commands = sys.stdin.buffer

    _preload(args.redis, token)

    # The parent closing the pipe ends the loop. No thread runs here, so fork is safe.
    for raw in commands:
        if raw.strip() != b"listen":
            _reply(replies, {"error": f"expected 'listen', not {raw.strip()[:40]!r}"})
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_server(args.redis, args.port, token, commands, replies)
            finally:
                # Never back into this loop, nor the launcher's exit handlers: a server
                # that failed to start (its port taken) ends here too, with code 1.
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        try:
            _reply(replies, {"stopped": os.waitstatus_to_exitcode(status)})
        except BrokenPipeError:
            return 0
    return 0


def _preload(redis_address: str, token: str) -> None:
    """Import everything a server runs (uvicorn imports its protocol classes on load),
    so each server forked from here starts in milliseconds. Starts no thread: fork
    stays safe."""
    import uvicorn  # noqa: PLC0415 - the parent never imports it for this

    from pitchey_cache.testing._backends import upstash_gateway_app  # noqa: PLC0415

    uvicorn.Config(upstash_gateway_app(redis_address, token), log_config=None).load()


def _run_server(
    redis_address: str, port: int, token: str, commands: IO[bytes], replies: IO[bytes]
) -> int:
    import uvicorn  # noqa: PLC0415 - loaded by the launcher already

    from pitchey_cache.testing._backends import upstash_gateway_app  # noqa: PLC0415

    # A fresh app each run: its lifespan closes its Redis client at the end.
    tap = GatewayTap(upstash_gateway_app(redis_address, token))
    # No access log: its lines hold no token, but the parent has no use for them.
    config = uvicorn.Config(
        tap,
        host=LOOPBACK,
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_control, args=(server, tap, commands, replies), daemon=True).start()
    server.run()
    replies.flush()
    return 0 if server.started else 1


def _control(server: Any, tap: GatewayTap, commands: IO[bytes], replies: IO[bytes]) -> None:
    """Answer the parent's commands; when the parent closes the pipe, shut down."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.005)
    _reply(replies, {"listening": os.getpid()})
    for raw in commands:
        command, _, argument = raw.decode().strip().partition(" ")
        if command == "fault":
            tap.fault = Fault(argument)
            _reply(replies, {"fault": tap.fault.value})
        elif command == "requests":
            _reply(replies, {"requests": [_exchange_json(e) for e in tap.requests()]})
        else:
            _reply(replies, {"error": f"unknown command {command!r}"})
    server.should_exit = True


def _reply(replies: IO[bytes], message: dict[str, Any]) -> None:
    replies.write(json.dumps(message).encode() + b"\n")
    replies.flush()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
