"""Every command block of the README, run as a newcomer would: top to bottom, as written.

Sybil finds the README's fenced ``bash`` and ``python`` blocks (and its ``<!-- skip:
next "why" -->`` comments for the few that cannot run here: ``make test`` itself, a
real Upstash account, a Docker engine). Each bash block runs in one ``bash`` with
``set -euo pipefail`` in a temporary copy of the repository, whose ``.venv`` is this
checkout's; the Python block is saved as a file and run with that venv's python. So
relative default directories (``.pitchey-cache/local-cluster``) stay relative, and a
block fails the test when any of its commands fails, or prints a traceback.

What a newcomer would do by hand, the harness does too: a server the README starts in
the foreground (``make run``, ``pitchey-cache serve``) runs in the background until the
next block that starts one, and the block goes on once it answers. A Redis listens on
6379, as the quick start assumes. Default ports (6379, 8080, 8079, 7001-7006 and their
bus ports) are moved only when something already holds them; then the block's port
numbers are rewritten and ``local-cluster up`` gets ``--port``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from pitchey_cache.devtools.local_cluster import (
    BUS_PORT_OFFSET,
    DEFAULT_DIR,
    STATE_FILENAME,
    busy_ports,
    free_port_block,
    stop_recorded,
)
from pitchey_cache.devtools.local_redis import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
OWN_PREFIXES = ("REDIS_", "CACHE_", "UPSTASH_")
# Not copied: the checkout's own state, which a fresh clone does not have either.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".env", ".pitchey-cache", "artifacts", "__pycache__", "*.egg-info",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
)  # fmt: skip
BLOCK_TIMEOUT_S = 180.0
SERVER_READY_S = 60
DEFAULT_HTTP_PORT, DEFAULT_GATEWAY_PORT, DEFAULT_REDIS_PORT = 8080, 8079, 6379
DEFAULT_CLUSTER_PORTS = range(7001, 7007)
# A command the README runs in the foreground that serves until stopped.
FOREGROUND_SERVER = re.compile(
    r"^(make run|\.venv/bin/pitchey-cache serve)\b(?!.*&\s*(#.*)?$)", re.MULTILINE
)
BACKGROUND_PORT = re.compile(r"&\s*(#.*)?$")
PRELUDE = f"""\
set -euo pipefail
await_http() {{
  for _ in $(seq {SERVER_READY_S * 10}); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "nothing answered at $1 within {SERVER_READY_S}s" >&2; return 1
}}
await_port() {{
  for _ in $(seq {SERVER_READY_S * 10}); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1 within {SERVER_READY_S}s" >&2; return 1
}}
"""


def _free(port: int) -> bool:
    return not busy_ports([port])


@dataclass
class Newcomer:
    """A fresh copy of the repository, its environment, and what its blocks started."""

    home: Path
    env: dict[str, str]
    ports: dict[int, int]
    cluster_base: int
    http_port: int
    redis: RedisServer
    # Whether `make run` would only serve: with this checkout's venv installed and
    # newer than pyproject.toml, as `make dev` leaves it. Otherwise make would
    # pip-install the copy into this checkout's venv, so its last step runs instead.
    make_ready: bool
    process_groups: list[int] = field(default_factory=list)
    health: dict[str, Any] | None = None

    def run_shell(self, example: Example) -> str | None:
        source: str = example.parsed
        script, starts_server = self.adapt(source)
        if starts_server:
            self.stop_servers()
        log = self.home / f"readme-line-{example.line}.log"
        with log.open("w") as output:
            process = subprocess.Popen(  # noqa: S603 - bash with the README's own block
                ["bash", "-c", PRELUDE + script],  # noqa: S607
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group: what the block leaves running is stopped by it.
                start_new_session=True,
            )
            self.process_groups.append(process.pid)
            try:
                code = process.wait(timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
        text = log.read_text(errors="replace")
        if code != 0 or "Traceback (most recent call last)" in text:
            return (
                f"README.md line {example.line}: the block "
                f"{'timed out' if code is None else f'exited with code {code}'}\n"
                f"--- as run ---\n{script}\n--- output ---\n{text[-6000:]}"
            )
        if starts_server:
            self.health = httpx.get(self.health_url, timeout=10).json()
        return self.check_health_lines(example.line, text)

    def run_python(self, example: Example) -> str | None:
        script = self.home / "quickstart.py"
        script.write_text(example.parsed)
        done = subprocess.run(  # noqa: S603 - the venv's python on the README's own block
            [str(self.home / ".venv" / "bin" / "python"), script.name],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            return f"README.md line {example.line}: exit {done.returncode}\n{done.stderr[-6000:]}"
        # The quick start's Redis (on 6379, or wherever it was moved) served every call.
        if "served by native-redis" not in done.stdout:
            return f"README.md line {example.line}: not served by Redis: {done.stdout}{done.stderr}"
        return None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/health/cache"

    def adapt(self, source: str) -> tuple[str, bool]:
        """The block with moved ports, and foreground servers sent to the background."""
        lines = []
        starts_server = False
        for raw in source.splitlines():
            line = self.moved(raw)
            if not self.make_ready:
                line = re.sub(r"^make run\b", ".venv/bin/pitchey-cache serve", line)
            lines.append(line)
            if FOREGROUND_SERVER.match(line):
                starts_server = True
                lines[-1] = f"{line.split('#', 1)[0].rstrip()} &"
                lines.append(f"await_http {self.health_url}")
            elif BACKGROUND_PORT.search(line):
                starts_server = True
                port = re.search(r"--port (\d+)", line)
                if port is not None:
                    lines.append(f"await_port {port.group(1)}")
        return "\n".join(lines) + "\n", starts_server

    def moved(self, line: str) -> str:
        for default, used in self.ports.items():
            if default != used:
                line = re.sub(rf"(?<![\d.]){default}(?!\d)", str(used), line)
        if self.cluster_base != DEFAULT_CLUSTER_PORTS[0]:
            line = re.sub(
                r"local-cluster up(?=\W|$)", f"local-cluster up --port {self.cluster_base}", line
            )
        return line

    def check_health_lines(self, line: int, output: str) -> str | None:
        """A block that curls the health endpoint must see a serving cache."""
        for text in output.splitlines():
            if text.startswith('{"type":'):
                body = json.loads(text)
                if body.get("status") not in {"healthy", "degraded"}:
                    return f"README.md line {line}: the health endpoint said {text}"
        return None

    def stop_servers(self) -> None:
        for group in self.process_groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(group):
                time.sleep(0.05)
            if _group_alive(group):
                os.killpg(group, signal.SIGKILL)
        self.process_groups.clear()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _evaluate_shell(example: Example) -> str | None:
    newcomer: Newcomer = example.namespace["newcomer"]
    return newcomer.run_shell(example)


def _evaluate_python(example: Example) -> str | None:
    newcomer: Newcomer = example.namespace["newcomer"]
    return newcomer.run_python(example)


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        CodeBlockParser("bash", evaluator=_evaluate_shell),
        CodeBlockParser("python", evaluator=_evaluate_python),
    ],
    filenames=["README.md"],
)
DOCUMENT = SYBIL.parse(README)
EXAMPLES = list(DOCUMENT.examples())


def _port_or_free(default: int) -> int:
    return default if _free(default) else free_port()


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    home = tmp_path_factory.mktemp("fresh-clone") / "pitchey-cache"
    shutil.copytree(REPO, home, ignore=NOT_COPIED)
    (home / ".venv").symlink_to(REPO / ".venv")
    cluster_ports = [*DEFAULT_CLUSTER_PORTS, *(p + BUS_PORT_OFFSET for p in DEFAULT_CLUSTER_PORTS)]
    cluster_base = DEFAULT_CLUSTER_PORTS[0] if not busy_ports(cluster_ports) else free_port_block(6)
    ports = {
        DEFAULT_REDIS_PORT: _port_or_free(DEFAULT_REDIS_PORT),
        DEFAULT_HTTP_PORT: _port_or_free(DEFAULT_HTTP_PORT),
        DEFAULT_GATEWAY_PORT: _port_or_free(DEFAULT_GATEWAY_PORT),
        **{p: cluster_base + i for i, p in enumerate(DEFAULT_CLUSTER_PORTS)},
    }
    # A newcomer's shell: none of our settings, and not inside the `make test` that may
    # be running this (its MAKEFLAGS would reach the README's own `make run`).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(OWN_PREFIXES) and k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    }
    # What a newcomer whose default port is taken would set; nothing otherwise.
    if ports[DEFAULT_REDIS_PORT] != DEFAULT_REDIS_PORT:
        env["REDIS_PORT"] = str(ports[DEFAULT_REDIS_PORT])
    if ports[DEFAULT_HTTP_PORT] != DEFAULT_HTTP_PORT:
        env["CACHE_HTTP_PORT"] = str(ports[DEFAULT_HTTP_PORT])
    make_ready = (
        subprocess.run(
            ["make", "--question", "install"],  # noqa: S607
            cwd=home,
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        ).returncode
        == 0
    )
    redis = RedisServer(ports[DEFAULT_REDIS_PORT], workdir=home.parent / "redis")
    redis.start()
    visitor = Newcomer(
        home=home,
        env=env,
        ports=ports,
        cluster_base=cluster_base,
        http_port=ports[DEFAULT_HTTP_PORT],
        redis=redis,
        make_ready=make_ready,
    )
    DOCUMENT.namespace["newcomer"] = visitor
    try:
        yield visitor
    finally:
        visitor.stop_servers()
        if (home / DEFAULT_DIR / STATE_FILENAME).exists():
            stop_recorded(home / DEFAULT_DIR, report=lambda _line: None)
        redis.stop()


def test_the_readme_has_the_blocks_a_newcomer_runs() -> None:
    """Guards the harness: a README rewritten into other block types would run nothing."""
    sources = [example.parsed for example in EXAMPLES if isinstance(example.parsed, str)]
    text = "\n".join(sources)
    for command in ("make run", "curl -s", "local-cluster up", "local-cluster down", "check"):
        assert command in text, command
    assert "upstash-gateway" in text
    assert any("Cache.from_env()" in source for source in sources)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"README.md:{e.line}")
def test_readme_block(example: Example, newcomer: Newcomer) -> None:
    # Sybil raises SybilFailure with the evaluator's message, or SkipTest for a skip.
    example.evaluate()
    source = example.parsed if isinstance(example.parsed, str) else ""
    if FOREGROUND_SERVER.search(source) and newcomer.health is not None:
        # The quick start's server found the Redis on 6379; the gateway's serve uses it.
        expected = "upstash-redis" if "UPSTASH_REDIS_REST_URL" in source else "native-redis"
        assert newcomer.health["type"] == expected, newcomer.health
        assert newcomer.health["status"] == "healthy", newcomer.health
