"""The Upstash gateway in front of a real redis-server, driven by the official SDK and raw HTTP.

The ``upstash-redis`` SDK is a client no one here wrote: if it works unchanged against
the gateway, the gateway speaks Upstash's protocol rather than our idea of it. Raw
httpx covers what the SDK never sends (the path form, bad methods, oversized bodies).
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from pitchey_cache.devtools.local_redis import (
    LOOPBACK,
    RedisServer,
    ReplyReader,
    free_port,
    resp_command,
)
from pitchey_cache.devtools.upstash_gateway import (
    MAX_KEY_BYTES,
    MAX_REQUEST_BYTES,
    TOKEN_VARIABLE,
    create_gateway_app,
    run_upstash_gateway_command,
)
from tests.integration.conftest import (
    GATEWAY_REDIS_TIMEOUT_MS,
    GatewayServer,
    RedisServerFactory,
)

# What "answers quickly" means when Redis is gone: both of the gateway's timeouts
# plus slack.
OUTAGE_BUDGET_SECONDS = 2 * GATEWAY_REDIS_TIMEOUT_MS / 1000 + 1.0
AWKWARD_KEYS = [
    "a/b/c",
    "what?x=1&y=2",
    "hash#fragment",
    "100%25 %",
    "with space",
    "{tag}:*",
    "line\r\nbreak",
    "ünïcødé 😀",
]


@pytest.fixture
def sdk(gateway: GatewayServer, token: str) -> Iterator[Redis]:
    # No retries: the SDK would otherwise sleep 3 s before retrying a failed request.
    with Redis(gateway.url, token, rest_retries=0, allow_telemetry=False) as client:
        yield client


@pytest.fixture
def http(gateway: GatewayServer, token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
        yield client


def quoted(key: str) -> str:
    return urllib.parse.quote(key, safe="")


# ---------------------------------------------------------------------------
# The official SDK, unchanged


def test_sdk_gets_and_sets_with_expiry(sdk: Redis) -> None:
    # The SDK turns SET's "OK" into True and its null (not set) into False.
    assert sdk.set("greeting", "hello")
    assert sdk.get("greeting") == "hello"
    assert sdk.get("missing") is None
    assert sdk.set("short-lived", "v", ex=100)
    assert 0 < sdk.ttl("short-lived") <= 100
    assert not sdk.set("greeting", "again", nx=True)
    assert sdk.delete("greeting", "short-lived") == 2
    assert sdk.exists("greeting") == 0


def test_sdk_round_trips_awkward_keys_and_values(sdk: Redis) -> None:
    value = 'NUL\x00 CR\r\n tab\t quote" {"json": [1, 2]} ünïcødé 😀 \U0001f9ea'
    for key in AWKWARD_KEYS:
        assert sdk.set(key, value)
        assert sdk.get(key) == value
    assert sdk.mget(*AWKWARD_KEYS, "missing") == [value] * len(AWKWARD_KEYS) + [None]
    # Numbers reach Redis as their JSON text.
    sdk.set("number", 12345678901234567890)
    sdk.set("float", 1.5)
    assert sdk.get("number") == "12345678901234567890"
    assert sdk.get("float") == "1.5"


def test_sdk_reads_reshaped_replies(sdk: Redis) -> None:
    # Replies valkey-glide reshapes (maps, doubles, sets, streams) reach the SDK in
    # Upstash's RESP2 shapes, which its own formatters expect.
    sdk.hset("user", values={"name": "Ada", "lang": "en"})
    assert sdk.hgetall("user") == {"name": "Ada", "lang": "en"}
    sdk.zadd("scores", {"a": 1.5, "b": 3})
    assert sdk.zscore("scores", "a") == 1.5
    assert sdk.zrange("scores", 0, -1, withscores=True) == [("a", 1.5), ("b", 3.0)]
    assert sdk.incrbyfloat("ratio", 0.5) == 0.5
    sdk.sadd("tags", "x", "y")
    assert sorted(sdk.smembers("tags")) == ["x", "y"]
    assert sdk.expire("user", 100) is True
    entry = sdk.xadd("events", "*", {"kind": "signup"})
    assert [list(e) for e in sdk.xrange("events", "-", "+")] == [[entry, ["kind", "signup"]]]
    assert sdk.ping() == "PONG"


def test_sdk_pipeline(sdk: Redis) -> None:
    pipeline = sdk.pipeline()
    pipeline.set("counter", 1)
    pipeline.incr("counter")
    pipeline.incrby("counter", 10)
    pipeline.get("counter")
    pipeline.get("missing")
    assert pipeline.exec() == [True, 2, 12, "12", None]


def test_sdk_transaction_is_atomic(sdk: Redis, redis_server: RedisServer) -> None:
    # Each transaction writes version i to "a", then a large padding value, then i to
    # "b". The padding makes Redis read a request in many chunks, so a reader on its own
    # connection gets turns in between: through /pipeline it sees a != b now and then
    # (5 torn reads in 461 when this test was written); through /multi-exec, never.
    seen: list[tuple[bytes, bytes]] = []
    stop = threading.Event()

    def read() -> None:
        with socket.create_connection((redis_server.host, redis_server.port), timeout=5) as conn:
            reader = ReplyReader(conn)
            while not stop.is_set():
                conn.sendall(resp_command(b"GET", b"a") + resp_command(b"GET", b"b"))
                seen.append((reader.reply(), reader.reply()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for version in range(1, 21):
            transaction = sdk.multi()
            transaction.set("a", version)
            transaction.set("padding", "x" * 500_000)
            transaction.set("b", version)
            assert len(transaction.exec()) == 3
    finally:
        stop.set()
        reader.join(timeout=10)
    assert sdk.mget("a", "b") == ["20", "20"]
    assert seen
    torn = [(a, b) for a, b in seen if a != b]
    assert not torn, torn[:5]


def test_sdk_bad_token_is_rejected_without_echo(gateway: GatewayServer, token: str) -> None:
    wrong = "not-" + token
    with (
        Redis(gateway.url, wrong, rest_retries=0, allow_telemetry=False) as client,
        pytest.raises(UpstashError, match="WRONGPASS") as raised,
    ):
        client.get("anything")
    assert wrong not in str(raised.value)
    assert token not in str(raised.value)


# ---------------------------------------------------------------------------
# Authentication and methods


def test_tokens_by_header_or_query_and_401_otherwise(
    gateway: GatewayServer, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/PING", params={"_token": token}).json() == {"result": "PONG"}
        for headers, params in [
            ({}, {}),
            ({"Authorization": "Bearer wrong-token"}, {}),
            ({"Authorization": f"Basic {token}"}, {}),
            ({}, {"_token": "wrong-token"}),
        ]:
            response = client.get("/PING", headers=headers, params=params)
            assert response.status_code == 401
            assert response.json() == {"error": "WRONGPASS invalid or missing auth token"}
    # uvicorn's access line for the ?_token= request is written with the token masked.
    deadline = time.monotonic() + 2
    while "_token=**********" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "_token=**********" in caplog.text
    assert token not in caplog.text


def test_wrong_methods_are_405(http: httpx.Client) -> None:
    for method, path in [("DELETE", "/"), ("PATCH", "/set/k/v"), ("GET", "/pipeline")]:
        response = http.request(method, path)
        assert response.status_code == 405
        assert set(response.json()) == {"error"}
        assert "Allow" in response.headers
    assert http.get("/multi-exec").status_code == 405
    assert http.post("/", json=["EXISTS", "k"]).json() == {"result": 0}


# ---------------------------------------------------------------------------
# The two request forms


def test_path_form_decodes_each_segment(http: httpx.Client) -> None:
    for key in AWKWARD_KEYS:
        value = f"value of {key}"
        response = http.get(f"/set/{quoted(key)}/{quoted(value)}")
        assert response.json() == {"result": "OK"}
        assert http.post("/", json=["GET", key]).json() == {"result": value}
        assert http.get(f"/get/{quoted(key)}").json() == {"result": value}


def test_path_form_post_body_is_the_value_and_query_params_follow(http: httpx.Client) -> None:
    value = b"raw body \x00\xff bytes"
    response = http.post(f"/set/{quoted('a/b')}", content=value, params={"EX": "100"})
    assert response.json() == {"result": "OK"}
    assert 0 < http.get(f"/ttl/{quoted('a/b')}").json()["result"] <= 100
    encoded = http.get(f"/get/{quoted('a/b')}", headers={"Upstash-Encoding": "base64"})
    assert base64.b64decode(encoded.json()["result"]) == value


def test_json_form_keeps_keys_and_json_numbers_exactly(http: httpx.Client) -> None:
    for key in AWKWARD_KEYS:
        assert http.post("/", json=["SET", key, key]).json() == {"result": "OK"}
        assert http.post("/", json=["GET", key]).json() == {"result": key}
    # Numbers and booleans are their JSON text, digit for digit.
    body = b'["MSET", "n", 12345678901234567890, "f", 1.50, "e", 1e3, "b", true]'
    assert http.post("/", content=body).json() == {"result": "OK"}
    reply = http.post("/", json=["MGET", "n", "f", "e", "b"]).json()
    assert reply == {"result": ["12345678901234567890", "1.50", "1e3", "true"]}


def test_binary_values_and_base64_replies(http: httpx.Client) -> None:
    every_byte = bytes(range(256))
    assert http.post("/set/binary", content=every_byte).json() == {"result": "OK"}
    http.post("/", json=["HSET", "h", "f", "v"])
    b64 = {"Upstash-Encoding": "base64"}

    def encoded(*command: object) -> object:
        return http.post("/", json=list(command), headers=b64).json()["result"]

    assert base64.b64decode(str(encoded("GET", "binary"))) == every_byte
    assert encoded("SET", "k", "v") == "OK"  # the status reply OK is never encoded
    assert encoded("PING") == base64.b64encode(b"PONG").decode()
    assert encoded("INCR", "n") == 1
    assert encoded("MGET", "k", "missing") == [base64.b64encode(b"v").decode(), None]
    assert encoded("HGETALL", "h") == [base64.b64encode(b"f").decode(), "dg=="]
    # Without base64, invalid UTF-8 becomes U+FFFD, as Upstash documents.
    plain = http.post("/", json=["GETRANGE", "binary", "250", "255"]).json()["result"]
    assert plain == "\ufffd" * 6


# ---------------------------------------------------------------------------
# Errors, pipelines, transactions, limits


def test_command_errors_are_400_with_redis_text(http: httpx.Client) -> None:
    http.post("/", json=["SET", "text", "not a number"])
    cases = {
        (b'["GET"]'): "ERR wrong number of arguments for 'get' command",
        (b'["NOSUCHCOMMAND", "x"]'): "ERR unknown command 'NOSUCHCOMMAND'",
        (b'["INCR", "text"]'): "ERR value is not an integer or out of range",
        (b'["LPUSH", "text", "x"]'): "WRONGTYPE Operation against a key holding",
        (b'["SET", "k", "v"'): "ERR the request body is not valid JSON",
        (b'{"command": "GET"}'): "ERR a command is a non-empty JSON array",
        (b'["SET", "k", null]'): "ERR argument 2 is a JSON null",
        (b"[]"): "ERR a command is a non-empty JSON array",
    }
    for body, message in cases.items():
        response = http.post("/", content=body)
        assert response.status_code == 400, body
        assert list(response.json()) == ["error"]
        assert response.json()["error"].startswith(message), response.json()


def test_refused_commands_explain_why(http: httpx.Client) -> None:
    for command in (["SELECT", "1"], ["BLPOP", "q", "0"], ["SUBSCRIBE", "c"], ["WATCH", "k"]):
        response = http.post("/", json=command)
        assert response.status_code == 400
        assert response.json()["error"].startswith(f"ERR {command[0]}: ")
    # The SDK has client_setinfo, so CLIENT SETINFO goes through to Redis (which knows it
    # from 7.2 on); only the gateway's own refusals start with "ERR CLIENT: ".
    setinfo = http.post("/", json=["CLIENT", "SETINFO", "LIB-NAME", "x"]).json()
    assert setinfo == {"result": "OK"} or not setinfo["error"].startswith("ERR CLIENT: ")
    assert (
        http.post("/", json=["CLIENT", "KILL", "ID", "1"])
        .json()["error"]
        .startswith("ERR CLIENT: ")
    )


def test_pipeline_answers_every_command_in_place(http: httpx.Client) -> None:
    commands = [["SET", "s", "x"], ["INCR", "s"], ["BLPOP", "q", "0"], ["GET", "s"]]
    response = http.post("/pipeline", json=commands)
    assert response.status_code == 200
    assert response.json() == [
        {"result": "OK"},
        {"error": "ERR value is not an integer or out of range"},
        {"error": "ERR BLPOP: blocking commands are not available over REST"},
        {"result": "x"},
    ]
    assert http.post("/pipeline", json=[]).json() == []


def test_transaction_errors_in_place_or_discarded_whole(http: httpx.Client) -> None:
    # A command that fails while running does not stop the others (Redis semantics).
    ran = http.post("/multi-exec", json=[["SET", "s", "x"], ["INCR", "s"], ["GET", "s"]])
    assert ran.json() == [
        {"result": "OK"},
        {"error": "ERR value is not an integer or out of range"},
        {"result": "x"},
    ]
    # One Redis refuses to queue discards the transaction: one error, nothing written.
    for bad in (["GET"], ["BLPOP", "q", "0"]):
        discarded = http.post("/multi-exec", json=[["SET", "written", "1"], bad])
        assert discarded.status_code == 400
        assert list(discarded.json()) == ["error"]
        assert http.post("/", json=["EXISTS", "written"]).json() == {"result": 0}


def test_sync_token_advances_with_writes_only(http: httpx.Client) -> None:
    def token_after(*command: str) -> int:
        response = http.post("/", json=list(command))
        return int(response.headers["Upstash-Sync-Token"])

    first = token_after("SET", "k", "v")
    assert token_after("GET", "k") == first
    assert token_after("SET", "k", "w") == first + 1
    pipeline = http.post("/pipeline", json=[["GET", "k"], ["DEL", "k"]])
    assert int(pipeline.headers["Upstash-Sync-Token"]) == first + 2
    assert "Upstash-Sync-Token" in http.post("/", json=["GET"]).headers


def test_request_and_key_size_limits(http: httpx.Client) -> None:
    too_large = http.post("/", content=b" " * (MAX_REQUEST_BYTES + 1))
    assert too_large.status_code == 400
    assert too_large.json()["error"].startswith("ERR max request size exceeded")
    long_key = "k" * (MAX_KEY_BYTES + 1)
    for command in (["SET", long_key, "v"], ["MGET", "short", long_key]):
        response = http.post("/", json=command)
        assert response.status_code == 400
        assert response.json()["error"] == (
            f"ERR max key size exceeded. Limit: {MAX_KEY_BYTES} bytes, "
            f"Actual: {MAX_KEY_BYTES + 1} bytes"
        )
    # The limit is on keys: a value that long, or a key at the limit, is fine.
    assert http.post("/", json=["SET", "short", long_key]).json() == {"result": "OK"}
    assert http.post("/", json=["SET", long_key[:-1], "v"]).json() == {"result": "OK"}
    piped = http.post("/pipeline", json=[["SET", long_key, "v"], ["GET", "short"]]).json()
    assert piped[0]["error"].startswith("ERR max key size exceeded")
    assert piped[1] == {"result": long_key}


# ---------------------------------------------------------------------------
# Redis outages


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def wait_for_200(http: httpx.Client, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while http.post("/", json=["PING"]).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover after Redis came back"
        time.sleep(0.1)


def test_dead_redis_answers_503_quickly_then_recovers(
    http: httpx.Client, sdk: Redis, redis_server: RedisServer
) -> None:
    assert http.post("/", json=["SET", "k", "v"]).status_code == 200
    redis_server.kill()
    for call in (
        lambda: http.post("/", json=["GET", "k"]),
        lambda: http.post("/pipeline", json=[["GET", "k"]]),
        lambda: http.get("/get/k"),
    ):
        response, elapsed = timed(call)
        assert response.status_code == 503
        assert response.json()["error"].startswith("ERR Redis at ")
        assert elapsed < OUTAGE_BUDGET_SECONDS
    started = time.monotonic()
    with pytest.raises(UpstashError, match="Redis at"):
        sdk.get("k")
    assert time.monotonic() - started < OUTAGE_BUDGET_SECONDS
    redis_server.start()
    wait_for_200(http)


def test_frozen_redis_answers_503_within_the_timeout(
    http: httpx.Client, redis_server: RedisServer
) -> None:
    assert http.post("/", json=["PING"]).status_code == 200
    redis_server.pause()
    try:
        response, elapsed = timed(lambda: http.post("/", json=["GET", "k"]))
        assert response.status_code == 503
        assert "did not answer" in response.json()["error"]
        assert elapsed < OUTAGE_BUDGET_SECONDS
    finally:
        redis_server.resume()
    wait_for_200(http)


# ---------------------------------------------------------------------------
# The command line


def test_cli_takes_the_token_from_the_environment_and_prints_no_secret(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    password = "redis-" + secrets.token_urlsafe(12)
    token = secrets.token_urlsafe(24)
    server = redis_server_factory(password=password)
    port = free_port()
    code = (
        "import sys; from pitchey_cache.devtools.upstash_gateway import "
        "run_upstash_gateway_command as run; sys.exit(run(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", code, "--redis", f"redis://:{password}@{server.address}/2"]
    log = tmp_path / "gateway.log"
    with log.open("wb") as output:
        # argv is this interpreter and the test's own arguments; no shell.
        process = subprocess.Popen(  # noqa: S603
            [*argv, "--port", str(port)],
            env={**os.environ, TOKEN_VARIABLE: token},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, log.read_text()
            with socket.socket() as probe:
                if probe.connect_ex((LOOPBACK, port)) == 0:
                    break
            assert time.monotonic() < deadline, "the gateway did not listen in time"
            time.sleep(0.05)
        url = f"http://{LOOPBACK}:{port}"
        with Redis(url, token, rest_retries=0, allow_telemetry=False) as client:
            assert client.set("via-cli", "yes")
            assert client.get("via-cli") == "yes"
        response = httpx.get(f"{url}/get/via-cli", params={"_token": token}, timeout=10)
        assert response.json() == {"result": "yes"}
    finally:
        process.terminate()
        process.wait(timeout=10)
    output_text = log.read_text()
    assert f"UPSTASH_REDIS_REST_URL=http://{LOOPBACK}:{port}" in output_text
    assert "_token=**********" in output_text
    assert token not in output_text
    assert password not in output_text


def test_cli_without_a_token_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_upstash_gateway_command(["--port", str(free_port())], environ={}) == 2
    assert TOKEN_VARIABLE in capsys.readouterr().err


def test_bad_redis_url_is_refused_without_showing_the_password() -> None:
    for url in ("redis://:hunter2@localhost:notaport", "http://:hunter2@localhost", "redis://h/x"):
        with pytest.raises(ValueError, match="--redis") as raised:
            create_gateway_app(url, "token")
        assert "hunter2" not in str(raised.value)
