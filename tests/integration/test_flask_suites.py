"""cachelib's generic test mixins and Flask-Caching's GenericCacheTests against
pitchey_cache.contrib.flask.PitcheyCache on a real Redis, and a Flask app using it.

The test files come from the installed cachelib's and Flask-Caching's sdists (see
foreign_suites.py). What does not run, and why, is in SERIALIZERS below.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import flask_caching
import pytest

from pitchey_cache import UnsupportedValueError
from pitchey_cache.contrib.flask import PitcheyCache
from pitchey_cache.devtools.local_redis import RedisServer
from tests.integration.foreign_suites import sdist_folder

pytestmark = pytest.mark.integration

CACHELIB_TESTS = sdist_folder("cachelib", "tests")
FLASK_CACHING_TESTS = sdist_folder("Flask-Caching", "tests")

# The serializer each suite runs with. cachelib's mixins store sample data that JSON
# cannot hold (a dict with an int key), as cachelib's own Redis cache pickles
# everything: they run in pickle mode. Flask-Caching's tests store JSON values only:
# they run in both modes. No single test is skipped.
SERIALIZERS = {"cachelib": ["pickle"], "flask-caching": ["json", "pickle"]}


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cachelib_test_data() -> types.ModuleType:
    """The part of cachelib's conftest.py the mixins import (TestData, under_uwsgi),
    without its fixtures, which start servers through pytest-xprocess."""
    source = (CACHELIB_TESTS / "conftest.py").read_text()
    tree = ast.parse(source)
    wanted = {"TestData", "under_uwsgi"}
    tree.body = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in wanted
    ]
    module = types.ModuleType("conftest")
    exec(compile(tree, str(CACHELIB_TESTS / "conftest.py"), "exec"), module.__dict__)  # noqa: S102 - cachelib's own test data
    return module


def _cachelib_mixins() -> dict[str, type[Any]]:
    # The mixins say `from conftest import TestData`: lend them that name while loading.
    saved = sys.modules.get("conftest")
    sys.modules["conftest"] = _cachelib_test_data()
    try:
        return {
            name: getattr(_load(CACHELIB_TESTS / f"{file}.py", f"cachelib_suite_{file}"), name)
            for file, name in [
                ("common", "CommonTests"),
                ("clear", "ClearTests"),
                ("has", "HasTests"),
                ("delete_many_with_prefix", "DeleteManyWithPrefixTests"),
            ]
        }
    finally:
        if saved is None:
            del sys.modules["conftest"]
        else:
            sys.modules["conftest"] = saved


_MIXINS = _cachelib_mixins()
CommonTests: Any = _MIXINS["CommonTests"]
ClearTests: Any = _MIXINS["ClearTests"]
HasTests: Any = _MIXINS["HasTests"]
DeleteManyWithPrefixTests: Any = _MIXINS["DeleteManyWithPrefixTests"]
GenericCacheTests: Any = _load(
    FLASK_CACHING_TESTS / "test_backend_cache.py", "flask_caching_suite_backend"
).GenericCacheTests


@pytest.fixture(scope="module")
def suite_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path_factory.mktemp("flask-suite-redis")) as server:
        yield server


def variables(server: RedisServer) -> dict[str, Any]:
    return {
        "REDIS_HOST": server.host,
        "REDIS_PORT": server.port,
        "REDIS_KEY_PREFIX": "flasksuite",
        "REDIS_COMMAND_TIMEOUT": 1000,
        "REDIS_CONNECT_TIMEOUT": 1000,
    }


# -- cachelib's mixins ------------------------------------------------------------------


# The mixins come from files mypy never sees: they are Any to it.
class TestCachelibMixins(CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests):  # type: ignore[misc]
    """cachelib's CommonTests, ClearTests, HasTests and DeleteManyWithPrefixTests."""

    @pytest.fixture(params=[None, "test-key-prefix:"], ids=["no_key_prefix", "with_key_prefix"])
    def key_prefix(self, request: pytest.FixtureRequest) -> str | None:
        """As cachelib's conftest: each test without and with a key prefix."""
        prefix: str | None = request.param
        return prefix

    @pytest.fixture(autouse=True, params=SERIALIZERS["cachelib"])
    def install_cache_factory(
        self, request: pytest.FixtureRequest, key_prefix: str | None, suite_redis: RedisServer
    ) -> None:
        """cachelib's convention: the test class gets ``cache_factory(**kwargs)``."""

        def factory(_self: object, *args: Any, **kwargs: Any) -> PitcheyCache:
            kwargs.setdefault("key_prefix", key_prefix)
            kwargs.setdefault("serializer", request.param)
            cache = PitcheyCache(*args, **{**variables(suite_redis), **kwargs})
            cache.clear()
            return cache

        request.cls.cache_factory = factory


# -- Flask-Caching's GenericCacheTests ----------------------------------------------------


class TestFlaskCachingGeneric(GenericCacheTests):  # type: ignore[misc]
    # Real expiry on a real server: no fake clock.
    _can_use_fast_sleep = False

    @pytest.fixture(params=SERIALIZERS["flask-caching"])
    def make_cache(
        self, request: pytest.FixtureRequest, suite_redis: RedisServer
    ) -> Iterator[Callable[[], PitcheyCache]]:
        cache = PitcheyCache(
            key_prefix="werkzeug-test-case:", serializer=request.param, **variables(suite_redis)
        )
        cache.clear()
        yield lambda: cache
        cache.clear()

    @pytest.fixture
    def sleep(self) -> Callable[[float], None]:
        return time.sleep


# -- a Flask app ------------------------------------------------------------------------


def test_a_flask_app_caches_a_view(suite_redis: RedisServer) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="pitchey_cache.contrib.flask.PitcheyCache",
        CACHE_DEFAULT_TIMEOUT=60,
        CACHE_KEY_PREFIX="app1:",
        CACHE_OPTIONS=variables(suite_redis),
    )
    cache = flask_caching.Cache(app)
    renders: list[str] = []

    @app.route("/pitch/<int:pitch_id>")
    @cache.cached()
    def pitch(pitch_id: int) -> str:
        renders.append(str(pitch_id))
        return f"pitch {pitch_id} rendered {len(renders)}"

    client = app.test_client()
    first = client.get("/pitch/7").text
    assert client.get("/pitch/7").text == first
    assert client.get("/pitch/8").text == "pitch 8 rendered 2"
    assert renders == ["7", "8"]

    backend = app.extensions["cache"][cache]
    assert isinstance(backend, PitcheyCache)
    assert backend.sync_cache.active_tier == "native-redis"
    # clear() removes this app's entries only.
    backend.sync_cache.set("flask:other-app:view", "kept")
    with app.app_context():
        cache.clear()
    assert client.get("/pitch/7").text == "pitch 7 rendered 3"
    assert backend.sync_cache.get("flask:other-app:view") == "kept"


def test_json_mode_refuses_what_json_cannot_hold(suite_redis: RedisServer) -> None:
    cache = PitcheyCache(**variables(suite_redis))
    with pytest.raises(UnsupportedValueError, match="serializer set to 'pickle'"):
        cache.set("k", {1: "int key"})
    pickled = PitcheyCache(serializer="pickle", **variables(suite_redis))
    assert pickled.set("k", {1: "int key"}) is True
    assert pickled.get("k") == {1: "int key"}
    assert cache.get("k") is None  # a JSON-mode reader never unpickles


def test_timeouts_follow_cachelib(suite_redis: RedisServer) -> None:
    cache = PitcheyCache(default_timeout=100, **variables(suite_redis))
    sync = cache.sync_cache
    cache.set("default", 1)
    cache.set("forever", 1, timeout=0)
    cache.set("short", 1, timeout=7)
    assert 90 <= sync.ttl("flask:default") <= 100
    assert sync.ttl("flask:forever") > 10 * 365 * 24 * 3600
    assert 1 <= sync.ttl("flask:short") <= 7
    assert cache.inc("n") == 1
    assert cache.dec("n", 3) == -2
