"""Settings: every variable of the guide, its default, its parsing and its errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pitchey_cache import ConfigError, NodeAddress, Secret, Settings
from pitchey_cache.tiers import build_chain
from tests.unit.fakes import FakeClock

SECRET = "s3cr3t-Zq9"
# Any readable file stands in for a PEM file: the settings check only that it exists.
PEM = __file__

# Every variable of the guide, then the ones pitchey-cache adds, with the setting
# it fills and the default a user gets when it is unset.
DEFAULTS: list[tuple[str, str, Any]] = [
    ("REDIS_CLUSTER_ENABLED", "cluster_enabled", False),
    ("REDIS_CLUSTER_NODES", "cluster_nodes", ()),
    ("REDIS_CLUSTER_PASSWORD", "cluster_password", None),
    ("REDIS_CLUSTER_USERNAME", "cluster_username", None),
    ("REDIS_CONNECTION_POOL_SIZE", "connection_pool_size", 5),
    ("REDIS_MAX_RETRIES", "max_retries", 3),
    ("REDIS_RETRY_DELAY", "retry_delay_ms", 1000),
    ("REDIS_CONNECT_TIMEOUT", "connect_timeout_ms", 5000),
    ("REDIS_COMMAND_TIMEOUT", "command_timeout_ms", 3000),
    ("REDIS_FAILOVER_TIMEOUT", "failover_timeout_ms", 10000),
    ("REDIS_MAX_FAILURES", "max_failures", 3),
    ("REDIS_HEALTH_CHECK_INTERVAL", "health_check_interval_ms", 30000),
    ("REDIS_HEARTBEAT_INTERVAL", "heartbeat_interval_ms", 250),
    ("REDIS_HEARTBEAT_TIMEOUT", "heartbeat_timeout_ms", 750),
    ("CACHE_ENABLED", "cache_enabled", True),
    ("CACHE_TTL", "cache_ttl", 300),
    ("REDIS_KEY_PREFIX", "key_prefix", "pitchey"),
    ("REDIS_FALLBACK_TO_SINGLE", "fallback_to_single", True),
    ("REDIS_HOST", "redis_host", None),
    ("REDIS_PORT", "redis_port", 6379),
    ("REDIS_PASSWORD", "redis_password", None),
    ("REDIS_USERNAME", "redis_username", None),
    ("REDIS_DB", "redis_db", 0),
    ("UPSTASH_REDIS_REST_URL", "upstash_url", None),
    ("UPSTASH_REDIS_REST_TOKEN", "upstash_token", None),
    ("REDIS_TLS_ENABLED", "tls_enabled", False),
    ("REDIS_TLS_CA_CERT", "tls_ca_cert", None),
    ("REDIS_TLS_CERT", "tls_cert", None),
    ("REDIS_TLS_KEY", "tls_key", None),
    ("REDIS_TLS_INSECURE", "tls_insecure", False),
    ("CACHE_ADMIN_TOKEN", "admin_token", None),
    ("CACHE_MEMORY_MAX_ENTRIES", "memory_max_entries", 10_000),
    ("CACHE_MEMORY_MAX_BYTES", "memory_max_bytes", 64 * 1024 * 1024),
    ("CACHE_MAX_VALUE_BYTES", "max_value_bytes", 1024 * 1024),
    ("CACHE_JOURNAL_MAX_KEYS", "journal_max_keys", 10_000),
    ("CACHE_FALLBACK_TTL", "fallback_ttl", 60),
    ("CACHE_HTTP_HOST", "http_host", "127.0.0.1"),
    ("CACHE_HTTP_PORT", "http_port", 8080),
    ("CACHE_LOG_FORMAT", "log_format", "plain"),
    ("CACHE_METRICS_ENABLED", "metrics_enabled", True),
    ("CACHE_METRICS_AUTH", "metrics_auth", True),
    ("CACHE_METRICS_HOST", "metrics_host", "127.0.0.1"),
    ("CACHE_METRICS_PORT", "metrics_port", None),
    ("CACHE_COALESCE", "coalesce", True),
    ("CACHE_NEAR_CACHE", "near_cache", False),
    ("CACHE_NEAR_MAX_ENTRIES", "near_max_entries", 10_000),
    ("CACHE_NEAR_MAX_BYTES", "near_max_bytes", 32 * 1024 * 1024),
    ("CACHE_NEAR_TTL", "near_ttl", 60),
]

# (environment, setting, parsed value). Variables that need a partner to be valid
# (cluster nodes need the cluster enabled, an Upstash URL needs its token) carry it.
PARSED: list[tuple[dict[str, str], str, Any]] = [
    (
        {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": "r1:6379"},
        "cluster_enabled",
        True,
    ),
    (
        {
            "REDIS_CLUSTER_ENABLED": "true",
            "REDIS_CLUSTER_NODES": " redis1.example.com:6379, redis2.example.com:6380,[::1]:7001,",
        },
        "cluster_nodes",
        (
            NodeAddress("redis1.example.com", 6379),
            NodeAddress("redis2.example.com", 6380),
            NodeAddress("::1", 7001),
        ),
    ),
    ({"REDIS_CLUSTER_PASSWORD": SECRET}, "cluster_password", Secret(SECRET)),
    ({"REDIS_CLUSTER_USERNAME": " app-user "}, "cluster_username", "app-user"),
    ({"REDIS_CONNECTION_POOL_SIZE": "10"}, "connection_pool_size", 10),
    ({"REDIS_MAX_RETRIES": "0"}, "max_retries", 0),
    ({"REDIS_RETRY_DELAY": "250"}, "retry_delay_ms", 250),
    ({"REDIS_CONNECT_TIMEOUT": "2000"}, "connect_timeout_ms", 2000),
    ({"REDIS_COMMAND_TIMEOUT": "1500"}, "command_timeout_ms", 1500),
    ({"REDIS_FAILOVER_TIMEOUT": "20000"}, "failover_timeout_ms", 20000),
    ({"REDIS_MAX_FAILURES": "5"}, "max_failures", 5),
    ({"REDIS_HEALTH_CHECK_INTERVAL": "15000"}, "health_check_interval_ms", 15000),
    ({"REDIS_HEARTBEAT_INTERVAL": "0"}, "heartbeat_interval_ms", 0),
    ({"REDIS_HEARTBEAT_TIMEOUT": "500"}, "heartbeat_timeout_ms", 500),
    ({"CACHE_ENABLED": "false"}, "cache_enabled", False),
    ({"CACHE_TTL": "600"}, "cache_ttl", 600),
    ({"REDIS_KEY_PREFIX": "myapp"}, "key_prefix", "myapp"),
    ({"REDIS_FALLBACK_TO_SINGLE": "false"}, "fallback_to_single", False),
    ({"REDIS_HOST": "redis.internal"}, "redis_host", "redis.internal"),
    ({"REDIS_PORT": "6380"}, "redis_port", 6380),
    ({"REDIS_PASSWORD": SECRET}, "redis_password", Secret(SECRET)),
    ({"REDIS_USERNAME": "app-user"}, "redis_username", "app-user"),
    ({"REDIS_DB": "2"}, "redis_db", 2),
    (
        {"UPSTASH_REDIS_REST_URL": "https://eu1.upstash.io/", "UPSTASH_REDIS_REST_TOKEN": "t"},
        "upstash_url",
        "https://eu1.upstash.io",
    ),
    (
        {"UPSTASH_REDIS_REST_URL": "https://eu1.upstash.io", "UPSTASH_REDIS_REST_TOKEN": SECRET},
        "upstash_token",
        Secret(SECRET),
    ),
    ({"CACHE_ADMIN_TOKEN": SECRET}, "admin_token", Secret(SECRET)),
    ({"CACHE_LOG_FORMAT": "JSON"}, "log_format", "json"),
    ({"REDIS_TLS_ENABLED": "true"}, "tls_enabled", True),
    ({"REDIS_TLS_ENABLED": "true", "REDIS_TLS_CA_CERT": PEM}, "tls_ca_cert", Path(PEM)),
    (
        {"REDIS_TLS_ENABLED": "true", "REDIS_TLS_CERT": PEM, "REDIS_TLS_KEY": PEM},
        "tls_cert",
        Path(PEM),
    ),
    (
        {"REDIS_TLS_ENABLED": "true", "REDIS_TLS_CERT": PEM, "REDIS_TLS_KEY": PEM},
        "tls_key",
        Path(PEM),
    ),
    ({"REDIS_TLS_ENABLED": "true", "REDIS_TLS_INSECURE": "yes"}, "tls_insecure", True),
    ({"CACHE_MEMORY_MAX_ENTRIES": "500"}, "memory_max_entries", 500),
    ({"CACHE_MEMORY_MAX_BYTES": "2097152"}, "memory_max_bytes", 2097152),
    ({"CACHE_MAX_VALUE_BYTES": "65536"}, "max_value_bytes", 65536),
    ({"CACHE_JOURNAL_MAX_KEYS": "50"}, "journal_max_keys", 50),
    ({"CACHE_FALLBACK_TTL": "30"}, "fallback_ttl", 30),
    ({"CACHE_HTTP_HOST": "0.0.0.0"}, "http_host", "0.0.0.0"),  # noqa: S104 - a parsed value
    ({"CACHE_HTTP_PORT": "9090"}, "http_port", 9090),
    ({"CACHE_METRICS_ENABLED": "off"}, "metrics_enabled", False),
    ({"CACHE_METRICS_AUTH": "false"}, "metrics_auth", False),
    ({"CACHE_METRICS_HOST": "10.0.0.5"}, "metrics_host", "10.0.0.5"),
    ({"CACHE_METRICS_PORT": "9464"}, "metrics_port", 9464),
    ({"CACHE_COALESCE": "false"}, "coalesce", False),
    ({"CACHE_NEAR_CACHE": "true"}, "near_cache", True),
    ({"CACHE_NEAR_MAX_ENTRIES": "500"}, "near_max_entries", 500),
    ({"CACHE_NEAR_MAX_BYTES": "1048576"}, "near_max_bytes", 1048576),
    ({"CACHE_NEAR_TTL": "5"}, "near_ttl", 5),
]

# (variable, bad value, the whole message the user reads).
BAD_VALUES: list[tuple[str, str, str]] = [
    (
        "REDIS_CLUSTER_ENABLED",
        "maybe",
        "REDIS_CLUSTER_ENABLED 'maybe': expected true or false",
    ),
    ("CACHE_ENABLED", "enabled", "CACHE_ENABLED 'enabled': expected true or false"),
    (
        "REDIS_FALLBACK_TO_SINGLE",
        "2",
        "REDIS_FALLBACK_TO_SINGLE '2': expected true or false",
    ),
    (
        "REDIS_CONNECTION_POOL_SIZE",
        "0",
        "REDIS_CONNECTION_POOL_SIZE '0': expected an integer 1-1000",
    ),
    ("REDIS_MAX_RETRIES", "three", "REDIS_MAX_RETRIES 'three': expected an integer 0-100"),
    ("REDIS_RETRY_DELAY", "1s", "REDIS_RETRY_DELAY '1s': expected an integer 0-600000"),
    (
        "REDIS_CONNECT_TIMEOUT",
        "-5",
        "REDIS_CONNECT_TIMEOUT '-5': expected an integer 1-600000",
    ),
    (
        "REDIS_COMMAND_TIMEOUT",
        "3000.5",
        "REDIS_COMMAND_TIMEOUT '3000.5': expected an integer 1-600000",
    ),
    (
        "REDIS_FAILOVER_TIMEOUT",
        "10s",
        "REDIS_FAILOVER_TIMEOUT '10s': expected an integer 1-86400000",
    ),
    ("REDIS_MAX_FAILURES", "0", "REDIS_MAX_FAILURES '0': expected an integer 1-1000000"),
    (
        "REDIS_HEALTH_CHECK_INTERVAL",
        "5",
        "REDIS_HEALTH_CHECK_INTERVAL '5': expected an integer 10-86400000",
    ),
    ("CACHE_TTL", "0", "CACHE_TTL '0': expected an integer >= 1"),
    ("REDIS_KEY_PREFIX", "app\nX", "REDIS_KEY_PREFIX 'app\\nX': must not contain CR, LF or NUL"),
    (
        "REDIS_HOST",
        "localhost:6379",
        "REDIS_HOST 'localhost:6379': expected a host name or IP address, without port or scheme",
    ),
    ("REDIS_PORT", "70000", "REDIS_PORT '70000': expected an integer 1-65535"),
    ("REDIS_USERNAME", "app user", "REDIS_USERNAME 'app user': an ACL user name has no spaces"),
    (
        "REDIS_CLUSTER_USERNAME",
        "app\tuser",
        "REDIS_CLUSTER_USERNAME 'app\\tuser': an ACL user name has no spaces",
    ),
    ("REDIS_PORT", "abc", "REDIS_PORT 'abc': expected an integer 1-65535"),
    ("REDIS_DB", "-1", "REDIS_DB '-1': expected an integer 0-10000"),
    (
        "UPSTASH_REDIS_REST_URL",
        "eu1.upstash.io",
        "UPSTASH_REDIS_REST_URL 'eu1.upstash.io': expected an http:// or https:// URL",
    ),
    (
        "CACHE_MEMORY_MAX_ENTRIES",
        "0",
        "CACHE_MEMORY_MAX_ENTRIES '0': expected an integer >= 1",
    ),
    (
        "CACHE_MEMORY_MAX_BYTES",
        "100",
        "CACHE_MEMORY_MAX_BYTES '100': expected an integer >= 1024",
    ),
    (
        "CACHE_MAX_VALUE_BYTES",
        "1MB",
        "CACHE_MAX_VALUE_BYTES '1MB': expected an integer 1-536870912",
    ),
    ("CACHE_JOURNAL_MAX_KEYS", "0", "CACHE_JOURNAL_MAX_KEYS '0': expected an integer >= 1"),
    (
        "CACHE_HTTP_HOST",
        "http://0.0.0.0",
        "CACHE_HTTP_HOST 'http://0.0.0.0': expected a host name or IP address, without port or scheme",
    ),
    ("CACHE_HTTP_PORT", "0", "CACHE_HTTP_PORT '0': expected an integer 1-65535"),
    ("CACHE_METRICS_AUTH", "maybe", "CACHE_METRICS_AUTH 'maybe': expected true or false"),
    (
        "CACHE_METRICS_PORT",
        "8080",
        "CACHE_METRICS_PORT '8080': must differ from CACHE_HTTP_PORT; leave it unset to serve /metrics there",
    ),
    (
        "REDIS_CLUSTER_NODES",
        "redis1:abc",
        "REDIS_CLUSTER_NODES entry 'redis1:abc': port must be an integer 1-65535",
    ),
    (
        "REDIS_CLUSTER_NODES",
        "redis1:6379,redis2",
        "REDIS_CLUSTER_NODES entry 'redis2': expected host:port, without scheme or user",
    ),
    (
        "REDIS_CLUSTER_NODES",
        "redis1:65536",
        "REDIS_CLUSTER_NODES entry 'redis1:65536': port must be an integer 1-65535",
    ),
]

# Integer variables and their documented range (None: no upper bound).
INT_RANGES: dict[str, tuple[int, int | None]] = {
    "REDIS_CONNECTION_POOL_SIZE": (1, 1000),
    "REDIS_MAX_RETRIES": (0, 100),
    "REDIS_RETRY_DELAY": (0, 600_000),
    "REDIS_CONNECT_TIMEOUT": (1, 600_000),
    "REDIS_COMMAND_TIMEOUT": (1, 600_000),
    "REDIS_FAILOVER_TIMEOUT": (1, 86_400_000),
    "REDIS_MAX_FAILURES": (1, 1_000_000),
    "REDIS_HEALTH_CHECK_INTERVAL": (10, 86_400_000),
    "REDIS_HEARTBEAT_INTERVAL": (0, 600_000),
    "REDIS_HEARTBEAT_TIMEOUT": (10, 600_000),
    "CACHE_FALLBACK_TTL": (1, None),
    "CACHE_TTL": (1, None),
    "REDIS_PORT": (1, 65535),
    "REDIS_DB": (0, 10_000),
    "CACHE_MEMORY_MAX_ENTRIES": (1, None),
    "CACHE_JOURNAL_MAX_KEYS": (1, None),
    "CACHE_HTTP_PORT": (1, 65535),
    "CACHE_METRICS_PORT": (1, 65535),
}


def field_of(variable: str) -> str:
    return next(name for var, name, _ in DEFAULTS if var == variable)


# -- defaults ---------------------------------------------------------------


def test_the_table_covers_every_setting() -> None:
    # A setting added to Settings without a row here would go untested.
    assert sorted(name for _, name, _ in DEFAULTS) == sorted(f.name for f in fields(Settings))
    assert set(Settings().describe()) == {var for var, _, _ in DEFAULTS}


@pytest.mark.parametrize(("variable", "setting", "default"), DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_unset_variable_reads_its_documented_default(
    variable: str, setting: str, default: Any
) -> None:
    settings = Settings.from_env({}, env_file=None)
    assert getattr(settings, setting) == default
    # `pitchey-cache check` prints the same default, by variable name.
    if default is None or default == ():
        shown = ""
    elif isinstance(default, bool):
        shown = str(default).lower()
    else:
        shown = str(default)
    assert settings.describe()[variable] == shown


def test_unset_redis_host_means_localhost() -> None:
    assert Settings.from_env({}, env_file=None).single_host == "localhost"


@pytest.mark.parametrize("variable", [d[0] for d in DEFAULTS])
def test_empty_or_blank_variable_counts_as_unset(variable: str) -> None:
    assert Settings.from_env({variable: "  "}, env_file=None) == Settings()


def test_variables_outside_the_guide_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/usr/bin", "REDIS_URL": "x"}, env_file=None) == Settings()


# -- parsing ----------------------------------------------------------------


@pytest.mark.parametrize(("environ", "setting", "expected"), PARSED, ids=[p[1] for p in PARSED])
def test_each_variable_is_parsed_from_the_environment(
    environ: dict[str, str], setting: str, expected: Any
) -> None:
    settings = Settings.from_env(environ, env_file=None)
    assert getattr(settings, setting) == expected


def test_parsing_covers_every_setting() -> None:
    assert {p[1] for p in PARSED} == {f.name for f in fields(Settings)}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" True ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"CACHE_ENABLED": raw}, env_file=None).cache_enabled is expected


# -- errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "message"), BAD_VALUES, ids=[f"{b[0]}={b[1]!r}" for b in BAD_VALUES]
)
def test_bad_value_names_variable_value_and_expectation(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: raw}, env_file=None)
    assert str(caught.value) == message
    assert caught.value.variable.startswith(variable)


def test_cluster_node_with_bad_port_gives_the_documented_message() -> None:
    environ = {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": "redis1:abc"}
    with pytest.raises(
        ConfigError,
        match=r"^REDIS_CLUSTER_NODES entry 'redis1:abc': port must be an integer 1-65535$",
    ):
        Settings.from_env(environ, env_file=None)


@pytest.mark.parametrize("nodes", [None, "", " , ,"])
def test_cluster_enabled_without_nodes_is_an_error(nodes: str | None) -> None:
    environ = {"REDIS_CLUSTER_ENABLED": "true"}
    if nodes is not None:
        environ["REDIS_CLUSTER_NODES"] = nodes
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, env_file=None)
    assert caught.value.variable == "REDIS_CLUSTER_NODES"
    assert "REDIS_CLUSTER_ENABLED=true" in str(caught.value)


def test_upstash_url_without_token_is_an_error_naming_the_token() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"UPSTASH_REDIS_REST_URL": "https://eu1.upstash.io"}, env_file=None)
    assert caught.value.variable == "UPSTASH_REDIS_REST_TOKEN"
    assert str(caught.value).startswith("UPSTASH_REDIS_REST_TOKEN")
    assert "UPSTASH_REDIS_REST_URL" in str(caught.value)


def test_memory_bound_below_the_value_limit_is_an_error() -> None:
    environ = {"CACHE_MAX_VALUE_BYTES": str(128 * 1024 * 1024)}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, env_file=None)
    assert caught.value.variable == "CACHE_MEMORY_MAX_BYTES"
    assert "CACHE_MAX_VALUE_BYTES" in str(caught.value)


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES"):
        Settings(cluster_enabled=True)
    with pytest.raises(ConfigError, match="REDIS_COMMAND_TIMEOUT"):
        Settings(command_timeout_ms=0)


# Derandomized: the same examples on every run, so the suite stays deterministic.
@hypothesis_settings(derandomize=True, deadline=None)
@given(data=st.data(), variable=st.sampled_from(sorted(INT_RANGES)))
def test_int_variables_parse_in_range_and_reject_the_rest(
    data: st.DataObject, variable: str
) -> None:
    low, high = INT_RANGES[variable]
    setting = field_of(variable)
    # Stay within what other settings allow (CACHE_MEMORY_MAX_BYTES is checked
    # against CACHE_MAX_VALUE_BYTES); those cross-checks have their own test.
    in_range = data.draw(st.integers(low, high if high is not None else 10**12), label="ok")
    spacing = data.draw(st.sampled_from(["", " ", "\t"]), label="spacing")
    parsed = Settings.from_env({variable: f"{spacing}{in_range}{spacing}"}, env_file=None)
    assert getattr(parsed, setting) == in_range

    out_of_range = data.draw(
        st.integers(max_value=low - 1)
        if high is None
        else st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1)),
        label="out of range",
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: str(out_of_range)}, env_file=None)
    assert caught.value.variable == variable
    assert repr(str(out_of_range)) in str(caught.value)

    non_numeric = data.draw(
        st.one_of(
            # Text without a single digit in it, of any script.
            st.text(min_size=1).filter(
                lambda s: bool(s.strip()) and not any(c.isdecimal() for c in s)
            ),
            # A number with a unit or a decimal part, the likeliest real mistake.
            st.from_regex(r"\A[0-9]{1,6}(ms|s|m|MB|\.[0-9]+)\Z"),
        ),
        label="non-numeric",
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: non_numeric}, env_file=None)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable} {non_numeric!r}: expected an integer")


# -- secrets ----------------------------------------------------------------


def all_secrets_environ() -> dict[str, str]:
    return {
        "REDIS_CLUSTER_ENABLED": "true",
        "REDIS_CLUSTER_NODES": "redis1.example.com:6379",
        "REDIS_CLUSTER_PASSWORD": SECRET + "-cluster",
        "REDIS_PASSWORD": SECRET + "-single",
        "UPSTASH_REDIS_REST_URL": "https://eu1.upstash.io",
        "UPSTASH_REDIS_REST_TOKEN": SECRET + "-upstash",
        "CACHE_ADMIN_TOKEN": SECRET + "-admin",
    }


def test_secrets_never_show_in_repr_str_or_describe() -> None:
    settings = Settings.from_env(all_secrets_environ(), env_file=None)
    described = settings.describe()
    for shown in (repr(settings), str(settings), repr(described)):
        assert SECRET not in shown
    for variable in (
        "REDIS_CLUSTER_PASSWORD",
        "REDIS_PASSWORD",
        "UPSTASH_REDIS_REST_TOKEN",
        "CACHE_ADMIN_TOKEN",
    ):
        assert described[variable] == "**********"
    # The values are still there for the tiers that need them.
    assert settings.redis_password is not None
    assert settings.redis_password.reveal() == SECRET + "-single"


def test_secret_shows_redacted() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert SECRET not in f"{secret}"
    assert secret.reveal() == SECRET


def test_errors_raised_with_secrets_set_do_not_show_them() -> None:
    environ = all_secrets_environ() | {"REDIS_PORT": "not-a-port"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, env_file=None)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        # A Redis URL pasted where a host name belongs.
        ("REDIS_HOST", f"redis://:{SECRET}@cache.internal"),
        # Upstash's console shows a rediss:// URL with the token in it beside the REST URL.
        ("UPSTASH_REDIS_REST_URL", f"rediss://default:{SECRET}@eu1.upstash.io:6379"),
        ("REDIS_CLUSTER_NODES", f"redis://default:{SECRET}@redis1.example.com:6379"),
    ],
)
def test_a_password_inside_a_bad_value_is_redacted_from_the_error(variable: str, raw: str) -> None:
    environ = {variable: raw, "UPSTASH_REDIS_REST_TOKEN": "t", "REDIS_CLUSTER_ENABLED": "true"}
    if variable != "REDIS_CLUSTER_NODES":
        environ["REDIS_CLUSTER_NODES"] = "redis1.example.com:6379"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, env_file=None)
    assert str(caught.value).startswith(variable)
    assert SECRET not in str(caught.value)


def test_credentials_inside_the_upstash_url_are_never_shown() -> None:
    environ = {
        "UPSTASH_REDIS_REST_URL": f"https://default:{SECRET}@eu1.upstash.io",
        "UPSTASH_REDIS_REST_TOKEN": "t",
    }
    try:
        settings = Settings.from_env(environ, env_file=None)
    except ConfigError as exc:
        # Refusing credentials in the URL is fine, as long as the message hides them.
        shown = [str(exc)]
    else:
        shown = [repr(settings), repr(settings.describe())]
    for text in shown:
        assert SECRET not in text


def test_cluster_node_given_as_url_is_an_error() -> None:
    # Without this check the cluster tier would try to resolve the host "redis://redis1".
    environ = {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": "redis://redis1:6379"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, env_file=None)
    assert str(caught.value).startswith("REDIS_CLUSTER_NODES entry 'redis://redis1:6379'")


# -- the .env file ----------------------------------------------------------


def test_env_file_is_read_and_the_real_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# .env.development\n"
        "\n"
        "REDIS_HOST=file-host\n"
        "export REDIS_PORT=6380\n"
        f'REDIS_PASSWORD="{SECRET}"\n'
        "CACHE_TTL=120  # two minutes\n"
        "REDIS_KEY_PREFIX='from-file'\n",
        encoding="utf-8",
    )
    settings = Settings.from_env({"REDIS_HOST": "env-host"}, env_file=env_file)
    assert settings.redis_host == "env-host"
    assert settings.redis_port == 6380
    assert settings.redis_password == Secret(SECRET)
    assert settings.cache_ttl == 120
    assert settings.key_prefix == "from-file"


def test_dot_env_in_the_working_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("CACHE_TTL=42\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).cache_ttl == 42


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    assert Settings.from_env({}, env_file=tmp_path / "absent.env") == Settings()


def test_bad_env_file_line_is_an_error_without_its_content(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"CACHE_TTL=60\nREDIS_PASSWORD {SECRET}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, env_file=env_file)
    assert str(caught.value) == f"{env_file}:2: expected KEY=VALUE"
    assert SECRET not in str(caught.value)


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_MAX_FAILURES=many\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^REDIS_MAX_FAILURES 'many': expected an integer"):
        Settings.from_env({}, env_file=env_file)


# -- the tier chain of the guide's four scenarios -----------------------------

PRODUCTION = {
    "REDIS_CLUSTER_ENABLED": "true",
    "REDIS_CLUSTER_NODES": "redis-1.internal:6379,redis-2.internal:6379,redis-3.internal:6379",
    "REDIS_CLUSTER_PASSWORD": "secure-cluster-password",
    "REDIS_CONNECTION_POOL_SIZE": "10",
    "CACHE_ENABLED": "true",
    "CACHE_TTL": "600",
}
DEVELOPMENT = {
    "REDIS_CLUSTER_ENABLED": "false",
    "REDIS_HOST": "localhost",
    "REDIS_PORT": "6379",
    "CACHE_ENABLED": "true",
    "CACHE_TTL": "300",
}
SERVERLESS = {
    "REDIS_CLUSTER_ENABLED": "false",
    "UPSTASH_REDIS_REST_URL": "https://your-instance.upstash.io",
    "UPSTASH_REDIS_REST_TOKEN": "your-token",
    "CACHE_ENABLED": "true",
}
MINIMAL = {"CACHE_ENABLED": "false"}


@pytest.mark.parametrize(
    ("environ", "chain"),
    [
        (PRODUCTION, ("redis-cluster", "in-memory")),
        (
            PRODUCTION | {"REDIS_HOST": "redis.internal"},
            ("redis-cluster", "native-redis", "in-memory"),
        ),
        (
            PRODUCTION | {"REDIS_HOST": "redis.internal", "REDIS_FALLBACK_TO_SINGLE": "false"},
            ("redis-cluster", "in-memory"),
        ),
        (DEVELOPMENT, ("native-redis", "in-memory")),
        (SERVERLESS, ("upstash-redis", "in-memory")),
        (MINIMAL, ("in-memory",)),
        (PRODUCTION | MINIMAL, ("in-memory",)),
        ({}, ("native-redis", "in-memory")),
    ],
    ids=[
        "production-cluster",
        "production-cluster-with-single-fallback",
        "production-cluster-fallback-disabled",
        "development-single",
        "serverless-upstash",
        "minimal-in-memory",
        "cluster-with-cache-disabled",
        "bare-environment",
    ],
)
def test_tier_chain_of_each_deployment_scenario(
    environ: dict[str, str], chain: tuple[str, ...]
) -> None:
    assert Settings.from_env(environ, env_file=None).tier_chain() == chain


def test_built_chain_follows_the_settings() -> None:
    settings = Settings.from_env(DEVELOPMENT, env_file=None)
    tiers = build_chain(settings, FakeClock())
    assert [t.name for t in tiers] == ["native-redis", "in-memory"]
    assert "localhost:6379" in tiers[0].describe()


def test_serverless_chain_builds_the_upstash_tier_without_the_token_in_any_repr() -> None:
    settings = Settings.from_env(SERVERLESS, env_file=None)
    tiers = build_chain(settings, FakeClock())
    assert [t.name for t in tiers] == ["upstash-redis", "in-memory"]
    token = SERVERLESS["UPSTASH_REDIS_REST_TOKEN"]
    assert token not in repr(tiers[0])
    assert token not in tiers[0].describe()


# -- contradictory settings ------------------------------------------------------------


def test_a_disabled_cache_with_a_cluster_configured_warns_what_it_ignores() -> None:
    settings = Settings.from_env(
        {
            "CACHE_ENABLED": "false",
            "REDIS_CLUSTER_ENABLED": "true",
            "REDIS_CLUSTER_NODES": "10.0.0.1:7000",
            "UPSTASH_REDIS_REST_URL": "https://example.upstash.io",
            "UPSTASH_REDIS_REST_TOKEN": "t",
        },
        env_file=None,
    )
    (warning,) = settings.warnings()
    assert settings.tier_chain() == ("in-memory",)
    assert "CACHE_ENABLED=false" in warning
    assert "REDIS_CLUSTER_ENABLED=true" in warning
    assert "UPSTASH_REDIS_REST_URL" in warning
    assert "REDIS_HOST" not in warning


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"REDIS_CONNECTION_POOL_SIZE": "5"}, None),
        ({"REDIS_CONNECTION_POOL_SIZE": "10"}, "has no effect on this chain"),
        (
            {
                "REDIS_CONNECTION_POOL_SIZE": "10",
                "REDIS_HOST": "localhost",
                "UPSTASH_REDIS_REST_URL": "https://example.upstash.io",
                "UPSTASH_REDIS_REST_TOKEN": "t",
            },
            "applies to upstash-redis only",
        ),
        (
            {
                "REDIS_CONNECTION_POOL_SIZE": "10",
                "UPSTASH_REDIS_REST_URL": "https://example.upstash.io",
                "UPSTASH_REDIS_REST_TOKEN": "t",
            },
            None,
        ),
    ],
)
def test_a_pool_size_the_redis_tiers_ignore_is_said(
    environ: dict[str, str], expected: str | None
) -> None:
    warnings = Settings.from_env(environ, env_file=None).warnings()
    if expected is None:
        assert warnings == ()
    else:
        (warning,) = warnings
        assert expected in warning
        assert "one multiplexed connection per node" in warning


def test_consistent_settings_warn_nothing() -> None:
    assert Settings().warnings() == ()


def test_a_near_cache_in_front_of_a_tier_without_invalidations_is_said() -> None:
    upstash = {
        "CACHE_NEAR_CACHE": "true",
        "UPSTASH_REDIS_REST_URL": "https://example.upstash.io",
        "UPSTASH_REDIS_REST_TOKEN": "t",
    }
    (warning,) = Settings.from_env(upstash, env_file=None).warnings()
    assert "CACHE_NEAR_CACHE=true keeps nothing while upstash-redis is the first tier" in warning
    redis_first = {**upstash, "REDIS_HOST": "localhost"}
    assert Settings.from_env(redis_first, env_file=None).warnings() == ()
