"""The OpenAPI document: valid, served as shipped, complete, and exact about every body.

The live run against a real server is ``tests/integration/test_openapi.py``; here the
bodies of caches over fake tiers, in states a real server is slow or awkward to reach
(a Redis Cluster with slots, a failback, a cache never started), are checked against
the document's schemas without a network.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from importlib.metadata import version
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from starlette.routing import Route
from starlette.testclient import TestClient

from pitchey_cache import Cache, Secret, Settings, create_app
from pitchey_cache.tiers import MemoryTier
from pitchey_cache.web.app import (
    CLUSTER_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    STATS_PATH,
    create_metrics_app,
    openapi_document,
)
from tests.unit.fakes import FakeClock, FakeTier, fake_tier

TOKEN = "openapi-unit-T0ken"
FAILOVER_TIMEOUT_MS = 1000
HEALTH_INTERVAL_MS = 30_000


def shipped_document() -> dict[str, Any]:
    text = resources.files("pitchey_cache.web").joinpath("openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    }


def served_operations(app: Any) -> set[tuple[str, str]]:
    operations = set()
    for route in app.routes:
        assert isinstance(route, Route)
        # Starlette answers HEAD wherever it answers GET; OpenAPI leaves HEAD implicit.
        operations |= {(route.path, m) for m in route.methods or () if m != "HEAD"}
    return operations


def response_validator(path: str, status: int, media_type: str = "application/json") -> Any:
    """A validator for the body of one documented response, references resolved."""
    pointer = "/".join(
        part.replace("~", "~0").replace("/", "~1")
        for part in ("paths", path, "get", "responses", str(status))
    )
    document = openapi_document()
    response = document["paths"][path]["get"]["responses"][str(status)]
    if "$ref" in response:
        pointer = response["$ref"].removeprefix("#/")
    schema_ref = f"#/{pointer}/content/{media_type.replace('/', '~1')}/schema"
    return jsonschema_rs.Draft202012Validator(
        {**document, "$ref": schema_ref}, validate_formats=True
    )


def assert_documented(path: str, status: int, body: dict[str, Any]) -> None:
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in response_validator(path, status).iter_errors(body)
    ]
    assert not errors, f"{path} {status} body does not match the document: {errors}"


# -- the document itself ---------------------------------------------------------------


def test_the_app_serves_the_shipped_file() -> None:
    with TestClient(create_app(Cache(Settings(cache_enabled=False)))) as client:
        response = client.get(OPENAPI_PATH)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == shipped_document()


def test_the_document_is_valid_openapi_with_valid_json_schemas() -> None:
    document = shipped_document()
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["version"] == version("pitchey-cache")

    schemathesis.openapi.from_dict(document).validate()
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_every_route_is_documented_and_every_documented_operation_is_served() -> None:
    app = create_app(Cache(Settings(cache_enabled=False)))

    assert served_operations(app) == documented_operations(openapi_document())


def test_the_metrics_listener_of_its_own_serves_only_documented_operations() -> None:
    settings = Settings(cache_enabled=False, metrics_port=9464)
    cache = Cache(settings)
    documented = documented_operations(openapi_document())

    assert served_operations(create_metrics_app(cache)) == {(METRICS_PATH, "GET")}
    assert served_operations(create_app(cache)) == documented - {(METRICS_PATH, "GET")}


def test_admin_operations_require_the_bearer_token_and_document_its_refusals() -> None:
    document = openapi_document()
    scheme = document["components"]["securitySchemes"]["adminToken"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    for path in (STATS_PATH, CLUSTER_PATH, METRICS_PATH):
        operation = document["paths"][path]["get"]
        assert operation["security"] == [{"adminToken": []}], path
        assert set(operation["responses"]) == {"200", "401", "403"}, path
    assert document["paths"][HEALTH_PATH]["get"]["security"] == []


# -- every body, against the document ----------------------------------------------------


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_failures": 2,
        "max_retries": 0,
        "failover_timeout_ms": FAILOVER_TIMEOUT_MS,
        "health_check_interval_ms": HEALTH_INTERVAL_MS,
        "admin_token": Secret(TOKEN),
    }
    values.update(overrides)
    return Settings(**values)


def cluster_tier() -> FakeTier:
    """A fake redis-cluster tier whose node is a master owning every slot."""
    tier = fake_tier("redis-cluster", address="10.0.0.1:7000")
    tier.node.slots = ((0, 8191), (8192, 16383))
    return tier


@pytest.fixture
def chain() -> tuple[FakeTier, FakeTier, MemoryTier, FakeClock]:
    clock = FakeClock(park_sleeps_from=HEALTH_INTERVAL_MS / 1000)
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    return cluster_tier(), fake_tier("native-redis"), memory, clock


async def bodies(cache: Cache) -> dict[str, dict[str, Any]]:
    return {
        HEALTH_PATH: await cache.health(),
        STATS_PATH: await cache.stats(),
        CLUSTER_PATH: await cache.cluster_info(),
    }


async def test_a_cache_never_started_answers_as_documented() -> None:
    cache = Cache(Settings(cache_enabled=False))
    answers = await bodies(cache)

    assert_documented(HEALTH_PATH, 503, answers[HEALTH_PATH])
    assert_documented(STATS_PATH, 200, answers[STATS_PATH])
    assert_documented(CLUSTER_PATH, 200, answers[CLUSTER_PATH])
    assert answers[CLUSTER_PATH]["enabled"] is False


async def test_a_started_cache_before_any_call_answers_as_documented(
    chain: tuple[FakeTier, FakeTier, MemoryTier, FakeClock],
) -> None:
    cluster, single, memory, clock = chain
    async with Cache(settings(), tiers=[cluster, single, memory], clock=clock) as cache:
        answers = await bodies(cache)

    # Nothing measured yet: the rates and averages are null, and documented so.
    assert answers[STATS_PATH]["cache"]["hitRate"] is None
    assert answers[HEALTH_PATH]["cluster"]["operations"]["successRate"] is None
    for path, body in answers.items():
        assert_documented(path, 200, body)


async def test_every_body_through_an_outage_and_a_failback_answers_as_documented(
    chain: tuple[FakeTier, FakeTier, MemoryTier, FakeClock],
) -> None:
    cluster, single, memory, clock = chain
    seen: list[tuple[str, dict[str, Any]]] = []
    async with Cache(settings(), tiers=[cluster, single, memory], clock=clock) as cache:
        setattr(cluster, "cluster_state", "ok")  # noqa: B010 - read with getattr by the cache
        await cache.set("a", {"n": 1})
        await cache.get("a")
        await cache.get("missing")
        seen.append(("healthy", await cache.cluster_info()))

        cluster.down = True
        single.down = True
        await cache.set("b", [1, 2])
        await cache.get("b")
        await cache.delete("a")
        down = await bodies(cache)

        cluster.down = False
        single.down = False
        clock.advance(FAILOVER_TIMEOUT_MS / 1000)
        await cache.get("probe-trigger")
        for _ in range(20):
            await asyncio.sleep(0)
        await cache.get("b")
        back = await bodies(cache)

    # The outage shows everywhere a field may be null or empty otherwise.
    stats = down[STATS_PATH]
    assert stats["status"] == "degraded"
    assert stats["activeTier"] == "in-memory"
    assert stats["tiers"][0]["nodes"][0]["lastError"] is not None
    assert {e["kind"] for e in stats["events"]} >= {"node-down", "failover"}
    assert {e["kind"] for e in back[STATS_PATH]["events"]} >= {"node-up", "failback"}
    assert down[CLUSTER_PATH]["condition"] == "down"
    for path, body in (*down.items(), *back.items(), *((CLUSTER_PATH, b) for _, b in seen)):
        assert_documented(path, 200, body)


def test_a_body_with_a_field_the_document_does_not_know_is_refused() -> None:
    body = {
        "enabled": False,
        "message": "no Redis Cluster is configured",
        "nodes": [],
        "surprise": 1,
    }

    with pytest.raises(AssertionError, match="surprise"):
        assert_documented(CLUSTER_PATH, 200, body)
