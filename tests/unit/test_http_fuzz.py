"""The HTTP endpoints under generated requests: paths, methods, headers, query strings
and bodies. Whatever arrives, the app answers without a 500, shows no secret it was
not sent, and serves an admin body only to the exact bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

import pytest
from hypothesis import event, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from pitchey_cache import Cache, ConfigError, Secret, Settings, create_app
from tests.attacks import SECRETS, leaks

ADMIN_TOKEN = SECRETS["CACHE_ADMIN_TOKEN"]
HEALTH = "/api/health/cache"
STATS = "/api/admin/cache/stats"
CLUSTER = "/api/admin/cache/cluster"
HEALTH_KEYS = {"type", "distributed", "status", "cluster"}

# Derandomized, so every run sends the same requests.
FUZZ = hypothesis_settings(
    derandomize=True,
    deadline=None,
    max_examples=300,
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """A memory-only cache with an admin token and every other secret set, so a leak
    of any of them into a response would show."""
    settings = Settings(
        cache_enabled=False,
        admin_token=Secret(ADMIN_TOKEN),
        redis_password=Secret(SECRETS["REDIS_PASSWORD"]),
        cluster_password=Secret(SECRETS["REDIS_CLUSTER_PASSWORD"]),
        upstash_url="https://eu1.upstash.io",
        upstash_token=Secret(SECRETS["UPSTASH_REDIS_REST_TOKEN"]),
    )
    # Exceptions stay inside the app, so a crash is seen as the 500 a client gets.
    with TestClient(
        create_app(Cache(settings)), raise_server_exceptions=False, follow_redirects=False
    ) as started:
        yield started


@dataclass
class Probe:
    """One generated request."""

    method: str
    path: str
    query: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def sent(self) -> str:
        """Everything the request carries, to tell an echo from a leak."""
        header_text = "\n".join(
            f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in self.headers
        )
        body = self.body.decode("latin-1")
        return "\n".join(
            [self.path, unquote(self.path), self.query, unquote(self.query), header_text, body]
        )

    def authorization(self) -> list[bytes]:
        return [value for name, value in self.headers if name.lower() == b"authorization"]


def carries_the_exact_token(probe: Probe) -> bool:
    """Whether some Authorization header has the Bearer scheme (any case) and the whole
    token, exactly. What else may surround it is the near-miss tests' business; this
    is the line nobody without the token may cross."""
    token = ADMIN_TOKEN.encode()
    return any(
        value[:7].lower() == b"bearer " and token in value[7:] for value in probe.authorization()
    )


# -- what is generated -------------------------------------------------------------------

# Weighted toward what reaches a handler (GET and HEAD on the three paths), where
# the token checks run; the rest probes routing.
METHODS = st.one_of(
    st.just("GET"),
    st.just("GET"),
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
    st.from_regex(r"\A[A-Za-z]{1,10}\Z"),
)
KNOWN_PATHS = [HEALTH, STATS, CLUSTER, "/", "/api", "/api/admin", "/api/admin/cache"]
PATH_SEGMENTS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
).map(lambda s: quote(s, safe=""))
PATHS = st.one_of(
    st.sampled_from([STATS, CLUSTER]),
    st.sampled_from([STATS, CLUSTER]),
    st.sampled_from([STATS, CLUSTER, HEALTH]),
    st.sampled_from(KNOWN_PATHS),
    # Lookalikes of the admin paths: case, trailing slash, doubled slash, encoded
    # letters, dot segments, path parameters.
    st.sampled_from(
        [
            STATS.upper(),
            STATS + "/",
            "/" + STATS,
            STATS.replace("stats", "%73tats"),
            STATS.replace("/stats", "/%2Fstats"),
            "/api/admin/../admin/cache/stats",
            "/api/health/../admin/cache/stats",
            STATS + ";token=" + ADMIN_TOKEN,
            STATS + "%00",
            CLUSTER + "/..",
            HEALTH + "/",
        ]
    ),
    st.lists(PATH_SEGMENTS, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.builds(lambda base, tail: base + tail, st.sampled_from(KNOWN_PATHS), PATH_SEGMENTS),
)
QUERIES = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            f"?token={quote(ADMIN_TOKEN)}",
            f"?_token={quote(ADMIN_TOKEN)}",
            f"?access_token={quote(ADMIN_TOKEN)}",
            f"?authorization=Bearer%20{quote(ADMIN_TOKEN)}",
            f"?Authorization=Bearer+{quote(ADMIN_TOKEN)}",
            f"?token={ADMIN_TOKEN}",
        ]
    ),
    st.text(st.characters(codec="ascii", exclude_characters="#"), max_size=40).map(
        lambda s: "?" + quote(s, safe="=&")
    ),
)


def case_flips(text: str) -> st.SearchStrategy[str]:
    """``text`` with some letters' case swapped (at least one, when it has letters)."""
    positions = [i for i, c in enumerate(text) if c.isalpha()]
    return st.sets(st.sampled_from(positions), min_size=1).map(
        lambda flip: "".join(c.swapcase() if i in flip else c for i, c in enumerate(text))
    )


WHITESPACE = st.sampled_from(["", " ", "  ", "\t", " \t "])
AUTHORIZATION_VALUES: st.SearchStrategy[bytes] = st.one_of(
    # The right token, with the scheme in any case and whitespace around it.
    st.builds(
        lambda scheme, gap, after: f"{scheme} {gap}{ADMIN_TOKEN}{after}".encode(),
        st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
        WHITESPACE,
        WHITESPACE,
    ),
    # Near misses: other cases, prefixes, extensions, other schemes, no scheme.
    case_flips(ADMIN_TOKEN).map(lambda t: f"Bearer {t}".encode()),
    st.integers(0, len(ADMIN_TOKEN) - 1).map(lambda n: f"Bearer {ADMIN_TOKEN[:n]}".encode()),
    st.integers(1, len(ADMIN_TOKEN) - 1).map(lambda n: f"Bearer {ADMIN_TOKEN[n:]}".encode()),
    st.text(st.characters(codec="ascii"), min_size=1, max_size=3).map(
        lambda extra: f"Bearer {ADMIN_TOKEN}{extra}".encode()
    ),
    st.sampled_from(
        [
            ADMIN_TOKEN,
            f"Basic {ADMIN_TOKEN}",
            f"Token {ADMIN_TOKEN}",
            f"Bearer{ADMIN_TOKEN}",
            f"Bearer\t{ADMIN_TOKEN}",
            f"Bearer {ADMIN_TOKEN} {ADMIN_TOKEN}",
            f"Bearer {ADMIN_TOKEN},Bearer {ADMIN_TOKEN}",
            f"Bearer {quote(ADMIN_TOKEN, safe='')}",
            "Bearer ",
            "Bearer",
            "",
        ]
    ).map(str.encode),
    # Very long values, and bytes that are not ASCII or not UTF-8.
    st.sampled_from(
        [
            b"Bearer " + ADMIN_TOKEN.encode() * 4000,
            b"Bearer " + b"a" * 100_000,
            b"Bearer " + ADMIN_TOKEN.encode() + b"\xa0",
            b"Bearer \xff\xfe" + ADMIN_TOKEN.encode(),
            "Bearer ädmin-tökén".encode(),
            "Bearer ädmin-tökén".encode("latin-1"),
        ]
    ),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
HEADER_NAMES = st.sampled_from(
    [b"authorization", b"Authorization", b"AUTHORIZATION", b"x-admin-token", b"cookie"]
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, AUTHORIZATION_VALUES), max_size=3)
BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.just(b'{"token": "' + ADMIN_TOKEN.encode() + b'"}'),
)
PROBES = st.builds(Probe, METHODS, PATHS, QUERIES, HEADERS, BODIES)


def send(client: TestClient, probe: Probe) -> tuple[int, str, list[tuple[str, str]]]:
    response = client.request(
        probe.method,
        probe.path + probe.query,
        headers=probe.headers,
        content=probe.body or None,
    )
    headers = [(k, v) for k, v in response.headers.multi_items()]
    return response.status_code, response.text, headers


def requested_path(client: TestClient, probe: Probe) -> str:
    """The path the app routes on: the one the client normalised, percent-decoded."""
    return unquote(client.build_request(probe.method, probe.path + probe.query).url.path)


# -- the properties ---------------------------------------------------------------------


@FUZZ
@given(probe=PROBES)
@example(probe=Probe("GET", STATS, f"?token={ADMIN_TOKEN}"))
@example(probe=Probe("GET", STATS, f"?_token={quote(ADMIN_TOKEN)}"))
@example(probe=Probe("GET", CLUSTER, headers=[(b"Authorization", ADMIN_TOKEN.encode())]))
@example(probe=Probe("GET", STATS + "/", f"?token={ADMIN_TOKEN}"))
@example(probe=Probe("HEAD", STATS))
@example(probe=Probe("OPTIONS", STATS, headers=[(b"Origin", b"https://evil.example")]))
def test_no_request_gets_a_500_a_secret_or_an_admin_body_without_the_token(
    client: TestClient, probe: Probe
) -> None:
    status, body, headers = send(client, probe)
    event(f"HTTP {status}")

    assert status < 500, f"{status} for {probe}: {body[:200]}"
    # The app may echo what the request itself carried (a redirect's Location keeps
    # the query string); any other secret in the answer is a leak.
    answer = body + "\n" + "\n".join(f"{k}: {v}" for k, v in headers)
    assert leaks(answer, ignore=probe.sent()) == [], f"{probe} got {answer[:300]}"
    if status == 200 and requested_path(client, probe) != HEALTH:
        assert carries_the_exact_token(probe), f"admin answer without the token: {probe}"


@pytest.mark.parametrize("path", [STATS, CLUSTER])
@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {ADMIN_TOKEN.swapcase()}",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Bearer {ADMIN_TOKEN[:1]}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer x{ADMIN_TOKEN}",
        f"Bearer {ADMIN_TOKEN.upper()}",
        f"Bearer {ADMIN_TOKEN.lower()}",
        f"Bearer {ADMIN_TOKEN}\x00",
        f"Bearer {quote(ADMIN_TOKEN, safe='')}",
        ADMIN_TOKEN,
    ],
)
def test_near_misses_of_the_token_are_refused_with_401(
    client: TestClient, path: str, authorization: str
) -> None:
    response = client.get(path, headers={"Authorization": authorization})

    assert response.status_code == 401
    assert leaks(response.text) == []


@pytest.mark.parametrize("path", [STATS, CLUSTER])
@pytest.mark.parametrize("name", ["token", "_token", "access_token", "admin_token"])
def test_the_token_in_a_query_string_is_never_accepted(
    client: TestClient, path: str, name: str
) -> None:
    response = client.get(f"{path}?{name}={quote(ADMIN_TOKEN, safe='')}")

    assert response.status_code == 401
    assert leaks(response.text) == []


@pytest.mark.parametrize("path", [STATS, CLUSTER])
@pytest.mark.parametrize("gap", [" ", "  ", " \t"])
def test_the_exact_token_is_accepted_with_whitespace_around_it(
    client: TestClient, path: str, gap: str
) -> None:
    # RFC 6750 allows one or more spaces after the scheme; whitespace at either end of
    # a header value is not part of it (RFC 9110, 5.5).
    response = client.get(path, headers={"Authorization": f"Bearer{gap}{ADMIN_TOKEN}{gap}"})

    assert response.status_code == 200
    assert leaks(response.text) == []


@pytest.mark.parametrize("ending", ["\n", "\r\n", " "])
def test_an_admin_token_read_from_a_file_is_refused_at_start_or_admits_its_holder(
    ending: str,
) -> None:
    """A token mounted from a file (a Kubernetes secret, ``$(cat token)`` without the
    strip) often ends in a newline. Refusing it at start-up is fine; starting with
    admin endpoints that no request can open is not."""
    try:
        settings = Settings.from_env(
            {"CACHE_ENABLED": "false", "CACHE_ADMIN_TOKEN": ADMIN_TOKEN + ending}, env_file=None
        )
    except ConfigError as error:
        refusal = error
    else:
        with TestClient(create_app(Cache(settings))) as started:
            response = started.get(STATS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 200, response.text
        return
    assert "CACHE_ADMIN_TOKEN" in str(refusal)
    assert leaks(f"{refusal}\n{refusal!r}") == []
