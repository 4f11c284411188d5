"""Real ``redis-server`` processes on loopback, for integration tests, benchmarks and demos.

Every server here is one this process started, and it is signalled by its PID, never
by name: a developer's own Redis, or another test run's, is never touched. Outages are
the honest kind: ``kill()`` is ``kill -9``, ``pause()`` freezes the process so clients
see timeouts rather than refused connections.

A server can speak TLS only (``tls=ServerTls(...)``), with certificates from a
throwaway :class:`LocalCertificateAuthority` made with ``openssl``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"

# Enough of the log to show why a server did not come up (bind errors, bad
# directives) without flooding a test report.
_LOG_TAIL_LINES = 20
_STOP_GRACE_SECONDS = 5.0
_POLL_INTERVAL_SECONDS = 0.02


def redis_server_path() -> str:
    """Return the absolute path of ``redis-server``, or explain how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server was not found on PATH. Install Debian's package `redis-server` "
            "(as root: apt-get install -y redis-server redis-tools), or run `make redis`."
        )
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the caller binds it; ``RedisServer.start``
    reports that case with the server's own "Address already in use" log line.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _openssl_path() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise RuntimeError(
            "openssl was not found on PATH; it makes the test certificates "
            "(as root: apt-get install -y openssl)."
        )
    return path


@dataclass(frozen=True)
class ServerTls:
    """TLS for a redis-server: its certificate and key, and the CA it trusts.

    Paths are absolute, because redis-server resolves relative ones against its
    working directory. ``auth_clients`` is redis' ``tls-auth-clients``: whether a
    client must present a certificate issued by ``ca_cert`` (mutual TLS). Redis uses
    the same certificate as a client for replication and the cluster bus, so it must
    allow both server and client authentication; :meth:`LocalCertificateAuthority.issue`
    makes such certificates.
    """

    cert: Path
    key: Path
    ca_cert: Path
    auth_clients: bool = False

    def server_args(self, port: int) -> list[str]:
        """redis-server options for TLS on ``port`` and no plaintext port at all."""
        return [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.cert.resolve()),
            "--tls-key-file", str(self.key.resolve()),
            "--tls-ca-cert-file", str(self.ca_cert.resolve()),
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
            # A replica of this server reaches its master over TLS as well.
            "--tls-replication", "yes",
        ]  # fmt: skip

    def client_context(self) -> ssl.SSLContext:
        """A context that trusts ``ca_cert`` and presents the server's own certificate,
        as redis does for replication: enough for any server of this CA, mutual TLS or not."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def record(self) -> dict[str, str | bool]:
        """The paths as JSON values, for a state file (certificate paths are no secret)."""
        return {
            "cert": str(self.cert),
            "key": str(self.key),
            "ca_cert": str(self.ca_cert),
            "auth_clients": self.auth_clients,
        }

    @classmethod
    def from_record(cls, record: dict[str, str | bool]) -> ServerTls:
        return cls(
            cert=Path(str(record["cert"])),
            key=Path(str(record["key"])),
            ca_cert=Path(str(record["ca_cert"])),
            auth_clients=bool(record["auth_clients"]),
        )


class LocalCertificateAuthority:
    """A throwaway certificate authority in ``directory``, made with ``openssl``.

    ``ca.crt`` and ``ca.key`` are created unless both are already there, so a
    directory keeps its CA (and the certificates it issued stay valid) across runs.
    Keys are ECDSA P-256, quick to generate, and written 0600. Certificates are for
    loopback only (127.0.0.1 and localhost) and for development and tests only.
    """

    def __init__(
        self, directory: Path, *, name: str = "pitchey-cache local CA", days: int = 30
    ) -> None:
        self.directory = directory.resolve()
        self.cert = self.directory / "ca.crt"
        self.key = self.directory / "ca.key"
        self._days = days
        if not (self.cert.is_file() and self.key.is_file()):
            self.directory.mkdir(parents=True, exist_ok=True)
            self._openssl(
                "req", "-x509", "-new", *self._new_key(self.key),
                "-out", str(self.cert),
                "-days", str(days),
                "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            )  # fmt: skip

    def __repr__(self) -> str:
        return f"<LocalCertificateAuthority {self.cert}>"

    def issue(self, name: str) -> tuple[Path, Path]:
        """A certificate and key for 127.0.0.1 and localhost, signed by this CA.

        Written as ``NAME.crt`` and ``NAME.key``, valid for server and client
        authentication; existing files of that name are replaced.
        """
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        request = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        try:
            self._openssl(
                "req", "-new", *self._new_key(key), "-out", str(request), "-subj", f"/CN={name}"
            )
            self._openssl(
                "x509", "-req", "-in", str(request),
                "-CA", str(self.cert), "-CAkey", str(self.key),
                "-set_serial", str(secrets.randbits(63)),
                "-days", str(self._days),
                "-extfile", str(extensions),
                "-out", str(cert),
            )  # fmt: skip
        finally:
            request.unlink(missing_ok=True)
            extensions.unlink(missing_ok=True)
        return cert, key

    def server_tls(self, name: str = "redis", *, auth_clients: bool = False) -> ServerTls:
        """A :class:`ServerTls` with a certificate ``name`` issued now (or kept, if there)."""
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if not (cert.is_file() and key.is_file()):
            cert, key = self.issue(name)
        return ServerTls(cert=cert, key=key, ca_cert=self.cert, auth_clients=auth_clients)

    @staticmethod
    def _new_key(path: Path) -> list[str]:
        # openssl writes a new private key 0600.
        return [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(path),
        ]

    @staticmethod
    def _openssl(*args: str) -> None:
        result = subprocess.run(
            [_openssl_path(), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise RuntimeError(f"openssl {args[0]} failed with code {result.returncode}:\n{output}")


def open_connection(
    host: str, port: int, *, timeout: float, tls: ServerTls | None = None
) -> socket.socket:
    """A connected socket to a local server, wrapped in TLS when the server speaks it."""
    conn = socket.create_connection((host, port), timeout=timeout)
    if tls is None:
        return conn
    try:
        return tls.client_context().wrap_socket(conn, server_hostname=host)
    except BaseException:
        conn.close()
        raise


class RedisServer:
    """A redis-server this process started on 127.0.0.1; stopped by PID, never by name.

    With ``tls``, it listens for TLS only, on ``port`` (``--port 0 --tls-port PORT``).
    """

    host: str = LOOPBACK

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: Path,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        tls: ServerTls | None = None,
    ) -> None:
        self.port: int = free_port() if port is None else port
        # Absolute: redis-server changes into --dir while it reads its arguments, so a
        # relative logfile (or any path after --dir) would be looked up from there.
        self.workdir = workdir.absolute()
        self.tls = tls
        self._password = password
        self._extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's PID while its process is alive (paused counts as alive)."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def logfile(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and return once it answers PING; raise RuntimeError if it doesn't."""
        if self.pid is not None:
            raise RuntimeError(f"redis-server on {self.address} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_path()]
        if self._password is not None:
            # A config file must come first on redis-server's command line. The password
            # lives there, not in argv, so `ps` and /proc/PID/cmdline never show it.
            argv.append(str(self._write_secret_config(self._password)))
        listen = ["--port", str(self.port)] if self.tls is None else self.tls.server_args(self.port)
        argv += [
            *listen,
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.logfile),
            # Later directives win, so callers can turn persistence back on or add
            # cluster options.
            *self._extra_args,
        ]  # fmt: skip
        # Configuration errors are printed to stderr before the logfile is opened;
        # appending stderr to the same file keeps them in the tail a failed start shows.
        with self.logfile.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                # Its own session, so a Ctrl-C meant for the test runner does not also
                # kill the server halfway through a fixture's teardown.
                start_new_session=True,
            )
        self._process = process
        self._paused = False
        self._wait_until_answering(process, timeout)

    def kill(self) -> None:
        """``kill -9`` the server and reap it; a no-op if it is already dead."""
        self._signal(signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections open, but nothing is answered."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused server run again with SIGCONT."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """Shut down with SIGTERM, falling back to SIGKILL after a grace period."""
        # A stopped process would hold SIGTERM pending forever; wake it first.
        self.resume()
        self._signal(signal.SIGTERM)
        if self._process is None:
            return
        try:
            self._process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port, stopping the current process first if it lives."""
        self.stop()
        self.start(timeout)

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

    def __repr__(self) -> str:
        tls = " tls" if self.tls is not None else ""
        return f"<RedisServer {self.address}{tls} pid={self.pid} {self._state()}>"

    def _state(self) -> str:
        if self._process is None:
            return "not started"
        returncode = self._process.poll()
        if returncode is not None:
            return f"exited ({returncode})"
        return "paused" if self._paused else "running"

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        # The server leads its own process group, so this also reaches a fork child it
        # may have left saving a snapshot. Suppressed: the process may die in between.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
        self._paused = False

    def _write_secret_config(self, password: str) -> Path:
        config = self.workdir / f"redis-{self.port}.conf"
        # Hex escapes inside double quotes let any byte through redis' config parser.
        escaped = "".join(f"\\x{byte:02x}" for byte in password.encode())
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(f'requirepass "{escaped}"\n')
        return config

    def _wait_until_answering(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            returncode = process.poll()
            if returncode is not None:
                raise RuntimeError(
                    f"redis-server on {self.address} exited with code {returncode} before "
                    f"answering PING.\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError(
                    f"redis-server on {self.address} did not answer PING within {timeout:g}s; "
                    f"killed it.\n{self._log_tail()}"
                )
            try:
                if self._answers_ping(process, timeout=min(remaining, 1.0)):
                    return
            except OSError:
                # Refused or timed out: the server is still starting up.
                pass
            time.sleep(_POLL_INTERVAL_SECONDS)

    def _answers_ping(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        """Whether *our* process answers PING, asked over a raw socket.

        A raw socket keeps readiness independent of any client library. The PID check
        matters: if another server already holds the port, it would answer PING while
        ours is still failing to bind.
        """
        commands = [resp_command(b"PING"), resp_command(b"INFO", b"server")]
        if self._password is not None:
            commands.insert(0, resp_command(b"AUTH", self._password.encode()))
        with open_connection(self.host, self.port, timeout=timeout, tls=self.tls) as conn:
            conn.sendall(b"".join(commands))
            reader = ReplyReader(conn)
            replies = [reader.reply() for _ in commands]
        # A server still loading its dataset answers -LOADING; keep polling then.
        pong, info = replies[-2:]
        return pong == b"+PONG" and b"process_id:%d\r\n" % process.pid in info

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log at {self.logfile})"
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"Last lines of {self.logfile}:\n{tail}"


def resp_command(*parts: bytes) -> bytes:
    bulk_strings = (b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    return b"*%d\r\n" % len(parts) + b"".join(bulk_strings)


class ReplyReader:
    """Just enough RESP2 to read one-line and bulk-string replies."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""

    def reply(self) -> bytes:
        """A one-line reply with its type byte (``+PONG``, ``-ERR ...``), or bulk data."""
        line = self._line()
        if not line.startswith(b"$"):
            return line
        size = int(line[1:])
        if size < 0:
            return b""
        while len(self._buffer) < size + 2:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _fill(self) -> None:
        chunk = self._conn.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection mid-reply")
        self._buffer += chunk
