"""``pitchey-cache status``: a running service's health and tiers as a table, and an exit code.

The exit code, for scripts and container health checks (the same 0/1/2 that
monitoring plugins read as OK, WARNING and CRITICAL):

- 0: healthy;
- 1: degraded (serving from a fallback tier, or with a failed node);
- 2: unhealthy, unreachable (connection refused, no answer within
  ``--timeout``, an answer that is not pitchey-cache's health), or a usage or
  configuration error.

The exit code comes from the public health endpoint alone. The admin token
only adds detail (every tier, node roles and slots, recent events): a token
the service refuses, or an admin endpoint that fails, is reported on stderr and
leaves the exit code as the health answer says. A checker's wrong token is not
an outage of the cache, and a health check must not restart a healthy
container over it.

Fetching (:func:`fetch`) and formatting (:func:`render`, :func:`exit_code`) are
separate, so the table is tested from bodies alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from pitchey_cache.config import Settings
from pitchey_cache.errors import CacheError, ConfigError
from pitchey_cache.redaction import redact
from pitchey_cache.web.paths import CLUSTER_PATH, HEALTH_PATH, STATS_PATH

EXIT_HEALTHY: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_UNHEALTHY: Final = 2
_EXIT_BY_STATUS: Final = {"healthy": EXIT_HEALTHY, "degraded": EXIT_DEGRADED}
DEFAULT_TIMEOUT_S: Final = 5.0
# Events shown at the end of the admin view; the service keeps more.
SHOWN_EVENTS: Final = 10
_ADMIN_DETAILS_HINT: Final = (
    "every tier, node roles and recent events need the admin token: "
    "set CACHE_ADMIN_TOKEN (or pass --token)"
)
_ANY_ADDRESS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - never bound: asked on loopback


class ServiceUnreachable(CacheError):  # noqa: N818 - a state, as TierUnavailable is
    """No usable health answer; the message is one line that names the URL."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the service answered.

    ``health`` is the public body. ``stats`` and ``cluster`` are the admin
    bodies, None when no token was given or the service did not give them;
    ``admin_problem`` then says why, when a token was given.
    """

    url: str
    health: Mapping[str, Any]
    token_given: bool = False
    stats: Mapping[str, Any] | None = None
    cluster: Mapping[str, Any] | None = None
    admin_problem: str | None = None


# -- exit code and table ------------------------------------------------------------------


def exit_code(snapshot: Snapshot) -> int:
    return _EXIT_BY_STATUS.get(str(snapshot.health.get("status")), EXIT_UNHEALTHY)


def render(snapshot: Snapshot) -> str:
    """The report printed on stdout, ending with a newline.

    Bodies are read leniently: a field an older or newer service lacks shows as
    ``-`` rather than failing the command.
    """
    health = snapshot.health
    uptime = _get(snapshot.stats, "uptime")
    if uptime is None:
        uptime = _get(health, "cluster", "performance", "uptime")
    reach = "distributed" if health.get("distributed") else "not distributed"
    lines = [
        f"pitchey-cache at {snapshot.url}: {str(health.get('status', '-')).upper()}",
        f"serving from {_text(health.get('type'))} ({reach}); uptime {_duration(uptime)}",
        "",
    ]
    if snapshot.stats is None:
        lines += _public_view(health)
        if not snapshot.token_given:
            lines += ["", _ADMIN_DETAILS_HINT]
    else:
        lines += _admin_view(snapshot.stats, snapshot.cluster)
    return "\n".join(lines) + "\n"


def _public_view(health: Mapping[str, Any]) -> list[str]:
    """The one tier the health body describes: the first of the chain."""
    block = _get(health, "cluster")
    if not isinstance(block, Mapping):
        return ["(the health answer describes no tier)"]
    # The body does not name its tier; it is known for a cluster, and when healthy
    # (then the first tier is the one serving).
    name = "first tier"
    if block.get("enabled"):
        name = "redis-cluster"
    elif health.get("status") == "healthy":
        name = _text(health.get("type"))
    # The health body's block says no condition: only the admin body does.
    row = _tier_row(name, block, active=name == health.get("type"))
    del row[_CONDITION]
    columns = [c for i, c in enumerate(_TIER_COLUMNS) if i != _CONDITION]
    lines = _table(columns, [row])
    nodes = [node for node in block.get("nodes") or () if isinstance(node, Mapping)]
    if nodes:
        lines += ["", *_node_table([(None, node) for node in nodes])]
    return lines


def _admin_view(stats: Mapping[str, Any], cluster: Mapping[str, Any] | None) -> list[str]:
    tiers = [tier for tier in stats.get("tiers") or () if isinstance(tier, Mapping)]
    rows = [
        [
            *_tier_row(_text(tier.get("name")), tier, active=tier.get("active") is True),
            "pending" if tier.get("journalPending") else "-",
        ]
        for tier in tiers
    ]
    lines = _table([*_TIER_COLUMNS, _Column("JOURNAL")], rows)
    nodes = [
        (_text(tier.get("name")), node)
        for tier in tiers
        for node in tier.get("nodes") or ()
        if isinstance(node, Mapping)
    ]
    if nodes:
        lines += ["", *_node_table(nodes)]
    lines += ["", *_summary(stats, cluster)]
    events = [event for event in stats.get("events") or () if isinstance(event, Mapping)]
    if events:
        shown = events[-SHOWN_EVENTS:]
        lines += ["", f"recent events ({len(shown)} of {len(events)} kept, oldest first):"]
        fields = ("at", "kind", "tier", "message")
        table = _table(
            [_Column(f.upper()) for f in fields],
            [[_text(event.get(f)) for f in fields] for event in shown],
            show_header=False,
        )
        lines += ["  " + line for line in table]
    return lines


@dataclass(frozen=True, slots=True)
class _Column:
    title: str
    numeric: bool = False


_CONDITION: Final = 2
_TIER_COLUMNS: Final = (
    _Column("TIER"),
    _Column("ACTIVE"),
    _Column("CONDITION"),
    _Column("NODES", numeric=True),
    _Column("CALLS", numeric=True),
    _Column("FAILED", numeric=True),
    _Column("SUCCESS", numeric=True),
    _Column("AVG MS", numeric=True),
)


def _tier_row(name: str, block: Mapping[str, Any], *, active: bool) -> list[str]:
    average = _get(block, "performance", "averageResponseTime")
    return [
        name,
        "*" if active else "",
        _text(block.get("condition")),
        f"{_text(block.get('healthyNodes'))}/{_text(block.get('totalNodes'))}",
        _text(_get(block, "operations", "total")),
        _text(_get(block, "operations", "failed")),
        _text(_get(block, "operations", "successRate")),
        f"{average:.3f}" if isinstance(average, int | float) else "-",
    ]


def _node_table(nodes: Sequence[tuple[str | None, Mapping[str, Any]]]) -> list[str]:
    """One row a node; its tier, role and last error where the admin body gives them."""
    admin = any(tier is not None for tier, _ in nodes)
    with_slots = any(node.get("slots") for _, node in nodes)
    columns = [_Column("NODE")]
    if admin:
        columns += [_Column("TIER"), _Column("ROLE")]
    columns += [
        _Column("HEALTHY"),
        _Column("FAILURES", numeric=True),
        _Column("LAST CHECK"),
        _Column("POOL", numeric=True),
    ]
    if with_slots:
        columns.append(_Column("SLOTS"))
    if admin:
        columns.append(_Column("LAST ERROR"))
    rows = []
    for tier, node in nodes:
        row = [_text(node.get("address"))]
        if admin:
            row += [_text(tier), _text(node.get("role"))]
        row += [
            _text(node.get("healthy")),
            _text(node.get("failureCount")),
            _text(node.get("lastHealthCheck")),
            _text(node.get("poolConnections")),
        ]
        if with_slots:
            row.append(_slots(node.get("slots")))
        if admin:
            row.append(_text(node.get("lastError")))
        rows.append(row)
    return _table(columns, rows)


def _summary(stats: Mapping[str, Any], cluster: Mapping[str, Any] | None) -> list[str]:
    def figure(*keys: str) -> str:
        return _text(_get(stats, *keys))

    lines = [
        (
            f"calls: {figure('cache', 'hits')} hits, {figure('cache', 'misses')} misses "
            f"(hit rate {figure('cache', 'hitRate')}), {figure('cache', 'sets')} sets, "
            f"{figure('cache', 'deletes')} deletes, {figure('cache', 'undecodable')} undecodable"
        ),
        (
            f"failover: {figure('failovers')} failovers, {figure('failbacks')} failbacks, "
            f"{figure('journal', 'pending')} invalidations pending, "
            f"{figure('healthChecks')} health-check rounds"
        ),
        (
            f"memory tier: {figure('memory', 'entries')} of {figure('memory', 'maxEntries')} "
            f"entries, {figure('memory', 'bytes')} of {figure('memory', 'maxBytes')} bytes, "
            f"{figure('memory', 'evictions')} evictions"
        ),
    ]
    if cluster is not None and cluster.get("enabled"):
        lines.append(
            f"cluster: state {_text(cluster.get('clusterState'))}, "
            f"condition {_text(cluster.get('condition'))}, {_text(cluster.get('seeds'))}"
        )
    elif cluster is not None:
        lines.append(f"cluster: {_text(cluster.get('message'))}")
    return lines


def _table(
    columns: Sequence[_Column], rows: Sequence[Sequence[str]], *, show_header: bool = True
) -> list[str]:
    """Aligned columns two spaces apart, numbers right-aligned."""
    shown = [[c.title for c in columns], *rows] if show_header else list(rows)
    widths = [max(len(row[i]) for row in shown) for i in range(len(columns))]
    return [
        "  ".join(
            cell.rjust(width) if column.numeric else cell.ljust(width)
            for cell, width, column in zip(row, widths, columns, strict=True)
        ).rstrip()
        for row in shown
    ]


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _slots(ranges: object) -> str:
    if not isinstance(ranges, list) or not ranges:
        return "-"
    return ",".join(
        f"{r[0]}-{r[1]}" if r[0] != r[1] else str(r[0])
        for r in ranges
        if isinstance(r, list) and len(r) == 2  # noqa: PLR2004 - a [first, last] pair
    )


def _duration(milliseconds: object) -> str:
    if not isinstance(milliseconds, int) or isinstance(milliseconds, bool):
        return "-"
    seconds = milliseconds // 1000
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def _get(body: Mapping[str, Any] | None, *keys: str) -> Any:
    """``body[k1][k2]...``, or None where a level is missing (an older or newer service)."""
    value: Any = body
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# -- talking to the service -----------------------------------------------------------------


def fetch(
    url: str,
    token: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
) -> Snapshot:
    """GET the health body and, with a token, the stats and cluster bodies.

    Raises :class:`ServiceUnreachable` when there is no usable health answer; admin
    failures only set ``Snapshot.admin_problem``.
    """
    base = url.rstrip("/")
    shown = display_url(base)
    with httpx.Client(
        timeout=timeout,
        transport=transport,
        follow_redirects=False,
        headers={"Accept": "application/json", "User-Agent": "pitchey-cache-status"},
    ) as client:
        health = _health(client, base + HEALTH_PATH, timeout)
        if token is None:
            return Snapshot(shown, health)
        auth = {"Authorization": f"Bearer {token}"}
        try:
            stats = _admin(client, base + STATS_PATH, auth, timeout)
        except _AdminUnavailable as exc:
            return Snapshot(shown, health, token_given=True, admin_problem=str(exc))
        try:
            cluster = _admin(client, base + CLUSTER_PATH, auth, timeout)
        except _AdminUnavailable as exc:
            return Snapshot(shown, health, token_given=True, stats=stats, admin_problem=str(exc))
    return Snapshot(shown, health, token_given=True, stats=stats, cluster=cluster)


class _AdminUnavailable(CacheError):  # noqa: N818 - internal: why admin details are missing
    """An admin endpoint refused the token or failed; the status is still known."""


def _health(client: httpx.Client, url: str, timeout: float) -> Mapping[str, Any]:
    shown = display_url(url)
    response = _get_or_raise(client, url, {}, timeout, ServiceUnreachable)
    if response.status_code not in {200, 503}:
        raise ServiceUnreachable(
            f"{shown} answered HTTP {response.status_code}, not a pitchey-cache health answer "
            "(is the URL right?)"
        )
    body = _json_object(response)
    if body is None or not isinstance(body.get("status"), str):
        raise ServiceUnreachable(
            f"{shown} answered HTTP {response.status_code} without a pitchey-cache health body "
            "(is the URL right?)"
        )
    return body


def _admin(
    client: httpx.Client, url: str, headers: Mapping[str, str], timeout: float
) -> Mapping[str, Any]:
    shown = display_url(url)
    response = _get_or_raise(client, url, headers, timeout, _AdminUnavailable)
    if response.status_code == 401:  # noqa: PLR2004 - HTTP status
        raise _AdminUnavailable(f"the admin token was refused (HTTP 401) by {shown}")
    if response.status_code == 403:  # noqa: PLR2004 - HTTP status
        raise _AdminUnavailable(
            f"{shown} answered HTTP 403: the admin endpoints are disabled there "
            "(the service has no CACHE_ADMIN_TOKEN)"
        )
    body = _json_object(response) if response.status_code == 200 else None  # noqa: PLR2004
    if body is None:
        raise _AdminUnavailable(f"{shown} answered HTTP {response.status_code} without a JSON body")
    return body


def _get_or_raise(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    error: type[CacheError],
) -> httpx.Response:
    shown = display_url(url)
    try:
        return client.get(url, headers=headers)
    except httpx.TimeoutException:
        raise error(f"no answer from {shown} within {timeout:g}s") from None
    except httpx.ConnectError as exc:
        raise error(f"cannot connect to {shown}: {_reason(exc)}") from None
    except httpx.HTTPError as exc:
        raise error(f"no usable answer from {shown}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def display_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, to print."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()


# -- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="where the service listens (default http://CACHE_HTTP_HOST:CACHE_HTTP_PORT, "
        "else http://127.0.0.1:8080; 0.0.0.0 is asked on 127.0.0.1)",
    )
    parser.add_argument(
        "--token",
        help="the admin token, for every tier, node roles and events (default "
        "CACHE_ADMIN_TOKEN; prefer that: other users of this machine can read arguments in ps)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )


def run(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run ``status`` with the parsed ``args`` (default environment ``os.environ``);
    returns the exit code."""
    env = os.environ if environ is None else environ
    try:
        url, token = _target(args.url, args.token, env)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", args.token or env.get("CACHE_ADMIN_TOKEN"))
    if not args.timeout > 0:
        return _fail("--timeout must be a positive number of seconds", token)
    try:
        snapshot = fetch(url, token, timeout=args.timeout, transport=transport)
    except ServiceUnreachable as exc:
        return _fail(str(exc), token)
    sys.stdout.write(_scrub(render(snapshot), token))
    if snapshot.admin_problem is not None:
        missing = "the public health only" if snapshot.stats is None else "no cluster section"
        _warn(f"{snapshot.admin_problem}; showing {missing}", token)
    return exit_code(snapshot)


def _target(url: str | None, token: str | None, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The URL and token to use, from the options or else the environment.

    Only CACHE_HTTP_HOST, CACHE_HTTP_PORT and CACHE_ADMIN_TOKEN are read, with
    the rules ``serve`` applies to them; other variables, even malformed, are
    none of this command's business.
    """
    wanted = []
    if url is None:
        wanted += ["CACHE_HTTP_HOST", "CACHE_HTTP_PORT"]
    if token is None:
        wanted.append("CACHE_ADMIN_TOKEN")
    settings = Settings.from_env({k: env[k] for k in wanted if k in env}, env_file=None)
    if url is None:
        host = _ANY_ADDRESS.get(settings.http_host, settings.http_host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{settings.http_port}"
    else:
        _check_url(url)
    if token is None:
        token = None if settings.admin_token is None else settings.admin_token.reveal()
    elif not token or not all(" " < c <= "~" for c in token):
        raise ConfigError("--token", None, "a bearer token is printable ASCII without spaces")
    return url, token


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        valid = parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError("--url", display_url(url), "expected http://host:port or https://...")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "--url",
            display_url(url),
            "must not hold credentials: the token goes in CACHE_ADMIN_TOKEN",
        )
    if parts.query or parts.fragment:
        # Not shown: a query may hold a token.
        raise ConfigError("--url", None, "expected no query or fragment")


def _scrub(text: str, token: str | None) -> str:
    """The text with the token masked. The service never echoes it, and this
    command formats it into nothing it prints; this makes sure of it."""
    return redact(text, token)


def _warn(message: str, token: str | None) -> None:
    print(_scrub(f"pitchey-cache status: {message}", token), file=sys.stderr)


def _fail(message: str, token: str | None) -> int:
    _warn(message, token)
    return EXIT_UNHEALTHY
