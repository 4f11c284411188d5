"""Settings read from the environment variables of the deployment guide.

Every variable of the guide is read with its documented default; durations
stay in milliseconds, as the guide writes them. A bad value raises
:class:`~pitchey_cache.errors.ConfigError` naming the variable, the value and
what was expected. Passwords and tokens are held in :class:`Secret`, whose
``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pitchey_cache.errors import ConfigError
from pitchey_cache.redaction import REDACTED, redact

__all__ = ["NodeAddress", "Secret", "Settings"]


_MAX_PORT = 65535
# A host name, IPv4 address, or bracketed IPv6 address.
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")
# Bounded, so a thousand-digit "number" is a ConfigError, not int()'s ValueError.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


class Secret:
    """A password or token. Shows as ``'**********'``; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A Redis node, ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, variable: str) -> NodeAddress:
        entry = text.strip()
        host, sep, port_text = entry.rpartition(":")
        if not sep or not host or not _HOST.fullmatch(host):
            raise ConfigError(
                f"{variable} entry {entry!r}", None, "expected host:port, without scheme or user"
            )
        host = host.removeprefix("[").removesuffix("]")
        port = _port(port_text)
        if port is None:
            raise ConfigError(
                f"{variable} entry {entry!r}", None, "port must be an integer 1-65535"
            )
        return cls(host, port)


def _port(text: str) -> int | None:
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()):
        return None
    port = int(text)
    return port if 1 <= port <= _MAX_PORT else None


# The guide's default; the Redis tiers ignore it, so only a changed value is worth a word.
_DEFAULT_POOL_SIZE = 5


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything pitchey-cache reads from its environment.

    Field names follow the variables (``REDIS_COMMAND_TIMEOUT`` is
    ``command_timeout_ms``). Build one with :meth:`from_env`, or directly in
    code and tests.
    """

    # Redis Cluster (the redis-cluster tier).
    cluster_enabled: bool = False
    cluster_nodes: tuple[NodeAddress, ...] = ()
    cluster_password: Secret | None = None
    cluster_username: str | None = None
    # Connection, retry and failover behaviour, shared by the Redis tiers.
    connection_pool_size: int = _DEFAULT_POOL_SIZE
    max_retries: int = 3
    retry_delay_ms: int = 1000
    connect_timeout_ms: int = 5000
    command_timeout_ms: int = 3000
    failover_timeout_ms: int = 10000
    max_failures: int = 3
    health_check_interval_ms: int = 30000
    # Liveness of each Redis node, on a connection of its own (0 turns heartbeats off).
    heartbeat_interval_ms: int = 250
    heartbeat_timeout_ms: int = 750
    # Cache behaviour.
    cache_enabled: bool = True
    cache_ttl: int = 300
    key_prefix: str = "pitchey"
    fallback_to_single: bool = True
    # Single Redis (the native-redis tier). ``redis_host`` is None when
    # REDIS_HOST is unset; the tier then uses localhost, see ``tier_chain``.
    redis_host: str | None = None
    redis_port: int = 6379
    redis_password: Secret | None = None
    redis_username: str | None = None
    redis_db: int = 0
    # Upstash over REST (the upstash-redis tier).
    upstash_url: str | None = None
    upstash_token: Secret | None = None
    # TLS to the Redis tiers (single and cluster). Verification is on unless
    # REDIS_TLS_INSECURE=true; the CA bundle defaults to the system store.
    tls_enabled: bool = False
    tls_ca_cert: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False
    # Added by pitchey-cache, in the same style.
    admin_token: Secret | None = None
    memory_max_entries: int = 10_000
    memory_max_bytes: int = 64 * 1024 * 1024
    max_value_bytes: int = 1024 * 1024
    journal_max_keys: int = 10_000
    # Longest TTL written to the in-memory tier while it stands in for a remote tier.
    fallback_ttl: int = 60
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_format: str = "plain"
    # Prometheus /metrics: on, behind CACHE_ADMIN_TOKEN, on the main listener,
    # unless CACHE_METRICS_AUTH=false (a private network) or CACHE_METRICS_PORT
    # moves it to a listener of its own.
    metrics_enabled: bool = True
    metrics_auth: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # Concurrent single-key reads of one loop tick go out as one multi-key read.
    coalesce: bool = True
    # The in-process near cache, invalidated by Redis (off unless asked for).
    near_cache: bool = False
    near_max_entries: int = 10_000
    near_max_bytes: int = 32 * 1024 * 1024
    near_ttl: int = 60

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def single_host(self) -> str:
        return self.redis_host or "localhost"

    def tier_chain(self) -> tuple[str, ...]:
        """The ordered tier names these settings produce.

        - ``redis-cluster`` when REDIS_CLUSTER_ENABLED;
        - ``native-redis`` when no cluster is enabled and either REDIS_HOST is
          set or no Upstash URL is (so a bare environment still tries
          localhost:6379); with a cluster, only when REDIS_FALLBACK_TO_SINGLE
          and REDIS_HOST are both set, because a production cluster should not
          silently fall back to a Redis on localhost;
        - ``upstash-redis`` when UPSTASH_REDIS_REST_URL is set;
        - ``in-memory`` always, last. CACHE_ENABLED=false leaves only it.
        """
        if not self.cache_enabled:
            return ("in-memory",)
        chain: list[str] = []
        if self.cluster_enabled:
            chain.append("redis-cluster")
            if self.fallback_to_single and self.redis_host is not None:
                chain.append("native-redis")
        elif self.redis_host is not None or self.upstash_url is None:
            chain.append("native-redis")
        if self.upstash_url is not None:
            chain.append("upstash-redis")
        chain.append("in-memory")
        return tuple(chain)

    def warnings(self) -> tuple[str, ...]:
        """Settings that contradict each other or have no effect; valid, but worth a word.

        ``check`` prints them and ``Cache.start`` logs them.
        """
        found = []
        if not self.cache_enabled:
            ignored = [
                text
                for text, present in (
                    ("REDIS_CLUSTER_ENABLED=true", self.cluster_enabled),
                    ("REDIS_HOST", self.redis_host is not None),
                    ("UPSTASH_REDIS_REST_URL", self.upstash_url is not None),
                )
                if present
            ]
            if ignored:
                found.append(
                    f"CACHE_ENABLED=false serves from memory only: {', '.join(ignored)} "
                    "is ignored; set CACHE_ENABLED=true to use it"
                )
        if self.connection_pool_size != _DEFAULT_POOL_SIZE:
            chain = self.tier_chain()
            redis = [tier for tier in chain if tier in {"redis-cluster", "native-redis"}]
            size = f"REDIS_CONNECTION_POOL_SIZE={self.connection_pool_size}"
            per_node = "keep one multiplexed connection per node whatever it says"
            if "upstash-redis" not in chain:
                found.append(
                    f"{size} has no effect on this chain: the Redis tiers {per_node}; "
                    "only upstash-redis uses it (its HTTP connection limit)"
                )
            elif redis:
                found.append(
                    f"{size} applies to upstash-redis only (its HTTP connection limit); "
                    f"{' and '.join(redis)} {per_node}"
                )
        if self.near_cache:
            first = self.tier_chain()[0]
            if first not in {"redis-cluster", "native-redis"}:
                found.append(
                    f"CACHE_NEAR_CACHE=true keeps nothing while {first} is the first tier: "
                    "only Redis (REDIS_CLUSTER_ENABLED or REDIS_HOST) sends the invalidations "
                    "it needs"
                )
        return tuple(found)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``) over a ``.env`` file.

        Variables in ``environ`` win over the file; a missing file is fine.
        Empty values count as unset.
        """
        merged: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            merged.update(_read_env_file(Path(env_file)))
        merged.update(os.environ if environ is None else environ)
        env = {k: v for k, v in merged.items() if k in _VARIABLES and v.strip() != ""}
        values: dict[str, Any] = {}
        try:
            for f in fields(cls):
                variable = _VARIABLE_OF[f.name]
                if variable in env:
                    values[f.name] = _PARSERS[f.name](variable, env[variable])
            return cls(**values)
        except ConfigError as exc:
            # A secret pasted into the wrong variable must not come back in the message.
            secrets = [env[v].strip() for v in _SECRET_VARIABLES if env.get(v, "").strip()]
            error = _without(exc, secrets)
        # Raised outside the except block, so the original is not kept as __context__.
        raise error

    def describe(self) -> dict[str, str]:
        """Every setting by variable name, secrets redacted, for ``check`` and logs."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif value is None:
                text = ""
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            out[_VARIABLE_OF[f.name]] = text
        return out


# -- parsing ---------------------------------------------------------------


def _bool(variable: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(variable, raw, "expected true or false")


def _int_in(low: int, high: int | None = None) -> Callable[[str, str], int]:
    def parse(variable: str, raw: str) -> int:
        bound = f"{low}-{high}" if high is not None else f">= {low}"
        if not _INTEGER.fullmatch(raw.strip()):
            raise ConfigError(variable, raw, f"expected an integer {bound}")
        value = int(raw.strip())
        if value < low or (high is not None and value > high):
            raise ConfigError(variable, raw, f"expected an integer {bound}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(variable: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(variable, raw, f"expected one of {', '.join(choices)}")
        return value

    return parse


def _nodes(variable: str, raw: str) -> tuple[NodeAddress, ...]:
    entries = [e for e in raw.split(",") if e.strip()]
    return tuple(NodeAddress.parse(e, variable=variable) for e in entries)


def _secret(_variable: str, raw: str) -> Secret:
    return Secret(raw)


def _token(variable: str, raw: str) -> Secret:
    """A bearer token: it travels in an HTTP header, so printable ASCII only.

    Surrounding whitespace (a secret file's trailing newline) is dropped.
    """
    token = raw.strip()
    if not token or not all(" " < c <= "~" for c in token):
        raise ConfigError(variable, None, "a bearer token is printable ASCII without spaces")
    return Secret(token)


def _username(variable: str, raw: str) -> str:
    name = raw.strip()
    if any(c.isspace() for c in name):
        raise ConfigError(variable, raw, "an ACL user name has no spaces")
    return name


def _host(variable: str, raw: str) -> str:
    host = raw.strip()
    if not _HOST.fullmatch(host):
        raise ConfigError(
            variable, raw, "expected a host name or IP address, without port or scheme"
        )
    return host.removeprefix("[").removesuffix("]")


def _file(variable: str, raw: str) -> Path:
    try:
        path = Path(raw.strip()).expanduser()
        found = path.is_file()
    except (OSError, RuntimeError, ValueError):
        found = False
    if not found:
        raise ConfigError(variable, raw, "expected the path of a readable PEM file")
    return path


def _prefix(variable: str, raw: str) -> str:
    prefix = raw.strip()
    if any(c in prefix for c in "\r\n\0"):
        raise ConfigError(variable, raw, "must not contain CR, LF or NUL")
    return prefix


def _url(variable: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        valid = (
            parts.scheme in {"http", "https"}
            and bool(parts.hostname)
            and (parts.port is None or parts.port > 0)
        )
    except ValueError:
        valid = False
    if "@" in url.partition("://")[2]:
        raise ConfigError(
            variable, None, "must not hold credentials: put the token in UPSTASH_REDIS_REST_TOKEN"
        )
    if not valid:
        raise ConfigError(variable, raw, "expected an http:// or https:// URL")
    if parts.query or parts.fragment or parts.path:
        raise ConfigError(
            variable,
            f"{parts.scheme}://{parts.netloc}",
            "expected only scheme, host and port: no path, query (a ?_token belongs in "
            "UPSTASH_REDIS_REST_TOKEN) or fragment",
        )
    return url


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "cluster_enabled": _bool,
    "cluster_nodes": _nodes,
    "cluster_password": _secret,
    "cluster_username": _username,
    "connection_pool_size": _int_in(1, 1000),
    "max_retries": _int_in(0, 100),
    "retry_delay_ms": _int_in(0, 600_000),
    "connect_timeout_ms": _int_in(1, 600_000),
    "command_timeout_ms": _int_in(1, 600_000),
    "failover_timeout_ms": _int_in(1, 86_400_000),
    "max_failures": _int_in(1, 1_000_000),
    "health_check_interval_ms": _int_in(10, 86_400_000),
    "heartbeat_interval_ms": _int_in(0, 600_000),
    "heartbeat_timeout_ms": _int_in(10, 600_000),
    "cache_enabled": _bool,
    "cache_ttl": _int_in(1),
    "key_prefix": _prefix,
    "fallback_to_single": _bool,
    "redis_host": _host,
    "redis_port": _int_in(1, 65535),
    "redis_password": _secret,
    "redis_username": _username,
    "redis_db": _int_in(0, 10_000),
    "upstash_url": _url,
    "upstash_token": _token,
    "tls_enabled": _bool,
    "tls_ca_cert": _file,
    "tls_cert": _file,
    "tls_key": _file,
    "tls_insecure": _bool,
    "admin_token": _token,
    "memory_max_entries": _int_in(1),
    "memory_max_bytes": _int_in(1024),
    "max_value_bytes": _int_in(1, 512 * 1024 * 1024),
    "journal_max_keys": _int_in(1),
    "fallback_ttl": _int_in(1),
    "http_host": _host,
    "http_port": _int_in(1, 65535),
    "log_format": _choice("plain", "json"),
    "metrics_enabled": _bool,
    "metrics_auth": _bool,
    "metrics_host": _host,
    "metrics_port": _int_in(1, 65535),
    "coalesce": _bool,
    "near_cache": _bool,
    "near_max_entries": _int_in(1),
    "near_max_bytes": _int_in(1024),
    "near_ttl": _int_in(1),
}

_VARIABLE_OF: dict[str, str] = {
    "cluster_enabled": "REDIS_CLUSTER_ENABLED",
    "cluster_nodes": "REDIS_CLUSTER_NODES",
    "cluster_password": "REDIS_CLUSTER_PASSWORD",
    "cluster_username": "REDIS_CLUSTER_USERNAME",
    "connection_pool_size": "REDIS_CONNECTION_POOL_SIZE",
    "max_retries": "REDIS_MAX_RETRIES",
    "retry_delay_ms": "REDIS_RETRY_DELAY",
    "connect_timeout_ms": "REDIS_CONNECT_TIMEOUT",
    "command_timeout_ms": "REDIS_COMMAND_TIMEOUT",
    "failover_timeout_ms": "REDIS_FAILOVER_TIMEOUT",
    "max_failures": "REDIS_MAX_FAILURES",
    "health_check_interval_ms": "REDIS_HEALTH_CHECK_INTERVAL",
    "heartbeat_interval_ms": "REDIS_HEARTBEAT_INTERVAL",
    "heartbeat_timeout_ms": "REDIS_HEARTBEAT_TIMEOUT",
    "cache_enabled": "CACHE_ENABLED",
    "cache_ttl": "CACHE_TTL",
    "key_prefix": "REDIS_KEY_PREFIX",
    "fallback_to_single": "REDIS_FALLBACK_TO_SINGLE",
    "redis_host": "REDIS_HOST",
    "redis_port": "REDIS_PORT",
    "redis_password": "REDIS_PASSWORD",
    "redis_username": "REDIS_USERNAME",
    "redis_db": "REDIS_DB",
    "upstash_url": "UPSTASH_REDIS_REST_URL",
    "upstash_token": "UPSTASH_REDIS_REST_TOKEN",
    "tls_enabled": "REDIS_TLS_ENABLED",
    "tls_ca_cert": "REDIS_TLS_CA_CERT",
    "tls_cert": "REDIS_TLS_CERT",
    "tls_key": "REDIS_TLS_KEY",
    "tls_insecure": "REDIS_TLS_INSECURE",
    "admin_token": "CACHE_ADMIN_TOKEN",
    "memory_max_entries": "CACHE_MEMORY_MAX_ENTRIES",
    "memory_max_bytes": "CACHE_MEMORY_MAX_BYTES",
    "max_value_bytes": "CACHE_MAX_VALUE_BYTES",
    "journal_max_keys": "CACHE_JOURNAL_MAX_KEYS",
    "fallback_ttl": "CACHE_FALLBACK_TTL",
    "http_host": "CACHE_HTTP_HOST",
    "http_port": "CACHE_HTTP_PORT",
    "log_format": "CACHE_LOG_FORMAT",
    "metrics_enabled": "CACHE_METRICS_ENABLED",
    "metrics_auth": "CACHE_METRICS_AUTH",
    "metrics_host": "CACHE_METRICS_HOST",
    "metrics_port": "CACHE_METRICS_PORT",
    "coalesce": "CACHE_COALESCE",
    "near_cache": "CACHE_NEAR_CACHE",
    "near_max_entries": "CACHE_NEAR_MAX_ENTRIES",
    "near_max_bytes": "CACHE_NEAR_MAX_BYTES",
    "near_ttl": "CACHE_NEAR_TTL",
}
_VARIABLES = frozenset(_VARIABLE_OF.values())


def _is_host(text: str) -> bool:
    """A host name, an IPv4 address, or an IPv6 address (bare, as settings hold it)."""
    if _HOST.fullmatch(text):
        return True
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _validate(s: Settings) -> None:
    """Checks that span variables, or that apply to settings built in code."""
    if s.cluster_enabled and not s.cluster_nodes:
        raise ConfigError(
            "REDIS_CLUSTER_NODES", None, "required when REDIS_CLUSTER_ENABLED=true (host:port,...)"
        )
    if s.upstash_url is not None:
        _url("UPSTASH_REDIS_REST_URL", s.upstash_url)
    if s.redis_host is not None and not _is_host(s.redis_host):
        raise ConfigError("REDIS_HOST", s.redis_host, "expected a host name or IP address")
    for name, token in (
        ("UPSTASH_REDIS_REST_TOKEN", s.upstash_token),
        ("CACHE_ADMIN_TOKEN", s.admin_token),
    ):
        if token is not None:
            _token(name, token.reveal())
    if s.upstash_url is not None and s.upstash_token is None:
        raise ConfigError(
            "UPSTASH_REDIS_REST_TOKEN", None, "required when UPSTASH_REDIS_REST_URL is set"
        )
    if (s.tls_cert is None) != (s.tls_key is None):
        raise ConfigError(
            "REDIS_TLS_CERT" if s.tls_cert is None else "REDIS_TLS_KEY",
            None,
            "mutual TLS needs both REDIS_TLS_CERT and REDIS_TLS_KEY",
        )
    tls_files = (s.tls_ca_cert, s.tls_cert, s.tls_key)
    if not s.tls_enabled and (s.tls_insecure or any(f is not None for f in tls_files)):
        raise ConfigError(
            "REDIS_TLS_ENABLED", None, "must be true for the other REDIS_TLS_ settings"
        )
    for name in ("command_timeout_ms", "connect_timeout_ms", "max_failures", "cache_ttl"):
        if getattr(s, name) < 1:
            raise ConfigError(_VARIABLE_OF[name], str(getattr(s, name)), "expected >= 1")
    if s.metrics_port is not None and s.metrics_port == s.http_port:
        raise ConfigError(
            "CACHE_METRICS_PORT",
            str(s.metrics_port),
            "must differ from CACHE_HTTP_PORT; leave it unset to serve /metrics there",
        )
    if s.memory_max_bytes < s.max_value_bytes:
        raise ConfigError(
            "CACHE_MEMORY_MAX_BYTES",
            str(s.memory_max_bytes),
            f"must be at least CACHE_MAX_VALUE_BYTES ({s.max_value_bytes})",
        )


_SECRET_VARIABLES = (
    "REDIS_CLUSTER_PASSWORD",
    "REDIS_PASSWORD",
    "UPSTASH_REDIS_REST_TOKEN",
    "CACHE_ADMIN_TOKEN",
)


def _without(error: ConfigError, secrets: list[str]) -> ConfigError:
    def scrub(text: str | None) -> str | None:
        return None if text is None else redact(text, *secrets)

    variable, expected = scrub(error.variable), scrub(error.expected)
    return ConfigError(variable or error.variable, scrub(error.value), expected or error.expected)


def _read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments, ``export`` and matching quotes allowed."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text = text.removeprefix("export ").strip()
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}", None, "expected KEY=VALUE")
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out
