"""Django's own cache test suite (``BaseCacheTests``) against PitcheyCache on a real Redis.

The tests come from ``tests/cache/tests.py`` of the installed Django's sdist (see
foreign_suites.py); they run twice, with ``SERIALIZER`` json and pickle. The tests
that do not run are in SKIPPED below, with the reason, and nowhere else.
"""

from __future__ import annotations

import sys
import threading
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import django
import pytest
from django.conf import settings

from pitchey_cache.devtools.local_redis import RedisServer, free_port
from tests.integration.foreign_suites import sdist_folder

pytestmark = pytest.mark.integration

DJANGO_CACHE_TESTS = sdist_folder("Django", "tests/cache")
# Django's suite is the package `cache` (its KEY_FUNCTION setting names
# "cache.tests.custom_key_func"), so its parent folder goes on the path.
sys.path.insert(0, str(DJANGO_CACHE_TESTS.parent))

REDIS_PORT = free_port()
BACKEND = "pitchey_cache.contrib.django.PitcheyCache"
# Small timeouts: a test that meets a dead server should not wait for the defaults.
REDIS_OPTIONS = {
    "REDIS_HOST": "127.0.0.1",
    "REDIS_PORT": REDIS_PORT,
    "REDIS_KEY_PREFIX": "djangosuite",
    "REDIS_COMMAND_TIMEOUT": 1000,
    "REDIS_CONNECT_TIMEOUT": 1000,
    "REDIS_RETRY_DELAY": 100,
}

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        SECRET_KEY="django-cache-suite-only",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        CACHES={"default": {"BACKEND": BACKEND, "OPTIONS": REDIS_OPTIONS}},
    )
    django.setup()

import django.test  # noqa: E402 - needs the settings above
from cache.tests import BaseCacheTests, caches_setting_for_tests  # noqa: E402
from django.core.cache import caches  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

from pitchey_cache import CommandError, ConfigError, UnsupportedValueError  # noqa: E402
from pitchey_cache.contrib.django import PitcheyCache  # noqa: E402

# Culling (MAX_ENTRIES, CULL_FREQUENCY) is Django's local caches' own eviction; a
# Redis evicts by its maxmemory policy. As for Django's Redis backend, the "cull"
# aliases are not configured at all.
_CULL = "culling is the local caches' eviction; Redis evicts by its maxmemory policy"
_PICKLES = "JSON mode: needs pickling of arbitrary objects"

# Every BaseCacheTests test that does not run, per serializer, and why.
SKIPPED: dict[str, dict[str, str]] = {
    "json": {
        "test_cull": _CULL,
        "test_zero_cull": _CULL,
        "test_cull_delete_when_store_empty": _CULL,
        "test_data_types": f"{_PICKLES} (a tuple, a function, a class)",
        "test_cache_read_for_model_instance": f"{_PICKLES} (a model instance)",
        "test_cache_write_for_model_instance_with_deferred": f"{_PICKLES} (a queryset)",
        "test_cache_read_for_model_instance_with_deferred": f"{_PICKLES} (a queryset)",
        "test_cache_write_unpicklable_object": f"{_PICKLES} (an HttpResponse, by the "
        "cache middleware)",
        "test_add_fail_on_pickleerror": f"{_PICKLES}; expects pickle.PickleError where JSON "
        "mode raises UnsupportedValueError (a TypeError) for any non-JSON value",
        "test_set_fail_on_pickleerror": f"{_PICKLES}; expects pickle.PickleError where JSON "
        "mode raises UnsupportedValueError (a TypeError) for any non-JSON value",
    },
    "pickle": {
        "test_cull": _CULL,
        "test_zero_cull": _CULL,
        "test_cull_delete_when_store_empty": _CULL,
    },
}


def _suite(serializer: str) -> type[Any]:
    """BaseCacheTests configured for one serializer, with its skips applied."""
    options = {**REDIS_OPTIONS, "SERIALIZER": serializer}
    caches_setting = caches_setting_for_tests(
        BACKEND=BACKEND, OPTIONS=options, exclude={"cull", "zero_cull"}
    )
    body: dict[str, Any] = {
        # As for Django's Redis backend: INCR of a non-integer is the server's error.
        "incr_decr_type_error": CommandError,
    }
    for name, reason in SKIPPED[serializer].items():
        body[name] = unittest.skip(reason)(getattr(BaseCacheTests, name))
    suite = type(
        f"TestDjangoCacheSuite{serializer.title()}",
        (BaseCacheTests, django.test.TestCase),
        body,
    )
    configured: type[Any] = django.test.override_settings(CACHES=caches_setting)(suite)
    return configured


TestDjangoCacheSuiteJson = _suite("json")
TestDjangoCacheSuitePickle = _suite("pickle")


@pytest.fixture(scope="module", autouse=True)
def suite_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir: Path = tmp_path_factory.mktemp("django-suite-redis")
    with RedisServer(workdir=workdir, port=REDIS_PORT) as server:
        yield server


def test_every_skip_names_a_test_of_the_suite() -> None:
    """A Django upgrade that renames a test must fail here, not skip nothing silently."""
    for skipped in SKIPPED.values():
        for name in skipped:
            assert callable(getattr(BaseCacheTests, name, None)), name


def test_the_suite_is_djangos_own() -> None:
    assert Path(sys.modules["cache.tests"].__file__ or "").is_relative_to(DJANGO_CACHE_TESTS)
    assert len([n for n in dir(BaseCacheTests) if n.startswith("test_")]) >= 50
    assert type(caches["default"]) is PitcheyCache


# -- what the suite does not cover ------------------------------------------------------

_unpickled: list[str] = []


def _tripwire() -> str:
    _unpickled.append("ran")
    return "payload"


class Tripwire:
    """Unpickling this runs code: what an attacker who can write to Redis would plant."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_tripwire, ())


def backend(**options: Any) -> PitcheyCache:
    return PitcheyCache(None, {"OPTIONS": {**REDIS_OPTIONS, **options}})


def test_a_json_mode_reader_never_unpickles(caplog: pytest.LogCaptureFixture) -> None:
    writer = backend(SERIALIZER="pickle")
    assert "anyone who can write to that Redis can run code" in caplog.text
    writer.set("planted", Tripwire())
    reader = backend(SERIALIZER="json")
    assert reader.get("planted", "miss") == "miss"
    assert reader.get_many(["planted"]) == {}
    assert _unpickled == []
    assert writer.get("planted") == "payload"  # pickle mode is the opt-in that does
    assert _unpickled == ["ran"]


def test_json_mode_says_how_to_store_other_objects() -> None:
    with pytest.raises(UnsupportedValueError, match="serializer set to 'pickle'"):
        backend().set("k", (1, 2))


def test_clear_removes_django_entries_only() -> None:
    django_cache = backend()
    django_cache.set("page", "html")
    plain = django_cache.sync_cache
    plain.set("not-django", 1)
    django_cache.clear()
    assert django_cache.get("page") is None
    assert plain.get("not-django") == 1


def test_every_thread_and_alias_shares_one_cache() -> None:
    seen: list[PitcheyCache] = []
    thread = threading.Thread(target=lambda: seen.append(caches["default"]))
    thread.start()
    thread.join()
    assert seen[0] is not caches["default"]  # Django: a backend object per thread
    assert seen[0].sync_cache is caches["default"].sync_cache is backend().sync_cache
    assert backend(REDIS_KEY_PREFIX="other").sync_cache is not backend().sync_cache


async def test_async_methods_run_on_the_cache_loop_not_a_thread_hop() -> None:
    cache = backend()

    hop = AssertionError("Django's default sync_to_async hop was used")
    with mock.patch("django.core.cache.backends.base.sync_to_async", side_effect=hop):
        await cache.aset("a", 1)
        assert await cache.aget("a") == 1
        assert await cache.aadd("a", 2) is False
        assert await cache.aincr("a", 4) == 5
        assert await cache.adecr("a") == 4
        assert await cache.ahas_key("a") is True
        assert await cache.atouch("a", 100) is True
        assert await cache.aset_many({"b": [1], "c": None}) == []
        assert await cache.aget_many(["a", "b", "c", "d"]) == {"a": 4, "b": [1], "c": None}
        assert await cache.aget_or_set("d", lambda: "made") == "made"
        assert await cache.aincr_version("d") == 2
        await cache.adelete_many(["b", "c"])
        assert await cache.adelete("a") is True
        await cache.aclear()
        assert await cache.aget("d", version=2) is None
        await cache.aclose()


def test_a_redis_outage_is_served_by_the_next_tier(redis_server: RedisServer) -> None:
    cache = PitcheyCache(
        None,
        {"OPTIONS": {**REDIS_OPTIONS, "REDIS_PORT": redis_server.port, "REDIS_MAX_FAILURES": 1}},
    )
    cache.set("before", "redis")
    assert cache.sync_cache.active_tier == "native-redis"
    redis_server.kill()
    cache.set("during", "memory")  # never raises
    assert cache.get("during") == "memory"
    assert cache.sync_cache.active_tier == "in-memory"
    assert cache.sync_cache.health()["status"] == "degraded"


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ConfigError, match="OPTIONS\\['REDIS_HOTS'\\]"):
        PitcheyCache(None, {"OPTIONS": {"REDIS_HOTS": "x"}})
    with pytest.raises(ConfigError, match=r"SERIALIZER.*'yaml'.*json' or 'pickle'"):
        PitcheyCache(None, {"OPTIONS": {"SERIALIZER": "yaml"}})
    with pytest.raises(ImproperlyConfigured, match="takes no LOCATION"):
        PitcheyCache("redis://localhost:6379", {})
