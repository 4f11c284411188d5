"""The guide's endpoints over a memory-only cache, through Starlette's TestClient."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from pitchey_cache import Cache, Secret, Settings, create_app
from pitchey_cache.tiers import MemoryTier
from tests.unit.fakes import FakeClock, fake_tier

ADMIN_TOKEN = "adm1n-T0ken-Xy7"
PASSWORD = "s3cr3t-Zq9"
SECRETS = [ADMIN_TOKEN, PASSWORD, PASSWORD + "-cluster", PASSWORD + "-upstash"]

STATS = "/api/admin/cache/stats"
CLUSTER = "/api/admin/cache/cluster"
HEALTH = "/api/health/cache"


def memory_only(admin_token: str | None) -> Settings:
    # Every secret is set, so a leak of any of them into a body would show.
    return Settings(
        cache_enabled=False,
        admin_token=None if admin_token is None else Secret(admin_token),
        redis_password=Secret(PASSWORD),
        cluster_password=Secret(PASSWORD + "-cluster"),
        upstash_url="https://eu1.upstash.io",
        upstash_token=Secret(PASSWORD + "-upstash"),
    )


@pytest.fixture
def cache() -> Cache:
    return Cache(memory_only(ADMIN_TOKEN))


@pytest.fixture
def client(cache: Cache) -> Iterator[TestClient]:
    with TestClient(create_app(cache)) as started:
        yield started


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# -- GET /api/health/cache -----------------------------------------------------------------

NODE_KEYS = {
    "address",
    "healthy",
    "failureCount",
    "lastHealthCheck",
    "poolConnections",
    "servedElsewhere",
}


def assert_guide_shape(body: dict[str, Any]) -> None:
    # The guide's four fields, plus `process`: whose figures these are.
    assert set(body) == {"type", "distributed", "status", "cluster", "process"}
    assert body["process"]["pid"] == os.getpid()
    assert "this process's own" in body["process"]["scope"]
    cluster = body["cluster"]
    assert set(cluster) == {
        "enabled",
        "totalNodes",
        "healthyNodes",
        "failedNodes",
        "operations",
        "performance",
        "connectionPool",
        "nodes",
    }
    assert set(cluster["operations"]) == {"total", "successful", "failed", "successRate"}
    assert set(cluster["performance"]) == {"averageResponseTime", "uptime"}
    assert set(cluster["connectionPool"]) == {
        "totalConnections",
        "activeConnections",
        "idleConnections",
    }
    assert isinstance(cluster["nodes"], list)
    for node in cluster["nodes"]:
        assert set(node) == NODE_KEYS


def test_health_has_the_guides_shape(client: TestClient) -> None:
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert_guide_shape(body)
    assert body["type"] == "in-memory"
    assert body["distributed"] is False
    assert body["status"] == "healthy"
    cluster = body["cluster"]
    assert cluster["enabled"] is False
    assert (cluster["totalNodes"], cluster["healthyNodes"], cluster["failedNodes"]) == (0, 0, 0)
    assert cluster["nodes"] == []
    assert cluster["connectionPool"] == {
        "totalConnections": 0,
        "activeConnections": 0,
        "idleConnections": 0,
    }
    assert isinstance(cluster["performance"]["uptime"], int)
    assert cluster["performance"]["uptime"] >= 0


def test_health_figures_come_from_real_counters(client: TestClient, cache: Cache) -> None:
    before = client.get(HEALTH).json()["cluster"]["operations"]
    assert before == {"total": 0, "successful": 0, "failed": 0, "successRate": None}
    assert client.get(HEALTH).json()["cluster"]["performance"]["averageResponseTime"] is None

    assert client.portal is not None
    client.portal.call(cache.set, "k", 1)
    client.portal.call(cache.get, "k")
    body = client.get(HEALTH).json()
    assert body["cluster"]["operations"] == {
        "total": 2,
        "successful": 2,
        "failed": 0,
        "successRate": "100.00%",
    }
    assert isinstance(body["cluster"]["performance"]["averageResponseTime"], float)


def test_health_is_503_when_the_cache_is_not_started(cache: Cache) -> None:
    # Without `with`, the TestClient runs no lifespan, so the cache never starts.
    client = TestClient(create_app(cache))
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"


def test_strict_health_is_503_while_a_fallback_tier_serves() -> None:
    clock = FakeClock(park_sleeps_from=30)
    redis = fake_tier("native-redis")
    redis.down = True
    memory = MemoryTier(max_entries=100, max_bytes=1024 * 1024, clock=clock)
    cache = Cache(Settings(), tiers=[redis, memory], clock=clock)
    with TestClient(create_app(cache)) as client:
        assert not cache.preferred_tier_serving
        # The guide's behaviour by default: degraded still answers 200.
        default = client.get(HEALTH)
        assert (default.status_code, default.json()["status"]) == (200, "degraded")
        assert client.get(HEALTH, params={"strict": "false"}).status_code == 200
        strict = client.get(HEALTH, params={"strict": "true"})
        assert (strict.status_code, strict.json()["status"]) == (503, "degraded")
        assert strict.json()["type"] == "in-memory"
        bad = client.get(HEALTH, params={"strict": "maybe"})
        assert bad.status_code == 400
        assert "strict" in bad.json()["error"]


def test_strict_health_is_200_while_the_first_tier_serves(client: TestClient) -> None:
    response = client.get(HEALTH, params={"strict": "true"})
    assert (response.status_code, response.json()["status"]) == (200, "healthy")


def test_strict_health_is_503_when_the_cache_is_not_started(cache: Cache) -> None:
    response = TestClient(create_app(cache)).get(HEALTH, params={"strict": "true"})
    assert (response.status_code, response.json()["status"]) == (503, "unhealthy")


def test_health_is_public(client: TestClient) -> None:
    assert client.get(HEALTH, headers=bearer("wrong")).status_code == 200


def test_the_app_lifespan_starts_and_closes_the_cache() -> None:
    cache = Cache(memory_only(ADMIN_TOKEN))
    with TestClient(create_app(cache)) as client:
        assert cache.started
        assert client.get(HEALTH).json()["status"] == "healthy"
    assert not cache.started


# -- the admin endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [STATS, CLUSTER])
def test_admin_endpoints_without_a_configured_token_are_forbidden(path: str) -> None:
    with TestClient(create_app(Cache(memory_only(None)))) as client:
        response = client.get(path, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 403
    assert "CACHE_ADMIN_TOKEN" in response.json()["error"]


@pytest.mark.parametrize("path", [STATS, CLUSTER])
@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, ""),
        (bearer("wrong-token"), ""),
        (bearer(ADMIN_TOKEN.upper()), ""),
        (bearer(ADMIN_TOKEN.lower()), ""),
        (bearer(ADMIN_TOKEN[:-1]), ""),
        (bearer(ADMIN_TOKEN + "x"), ""),
        (bearer(""), ""),
        ({"Authorization": ADMIN_TOKEN}, ""),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, ""),
        ({"Authorization": f"Token {ADMIN_TOKEN}"}, ""),
        ({"X-Admin-Token": ADMIN_TOKEN}, ""),
        ({}, f"?token={ADMIN_TOKEN}"),
        ({}, f"?access_token={ADMIN_TOKEN}"),
        ({}, f"?authorization=Bearer%20{ADMIN_TOKEN}"),
    ],
    ids=[
        "missing",
        "wrong",
        "upper-cased",
        "lower-cased",
        "prefix-of-right",
        "right-plus-one",
        "empty-bearer",
        "no-scheme",
        "basic-scheme",
        "token-scheme",
        "other-header",
        "query-token",
        "query-access-token",
        "query-authorization",
    ],
)
def test_admin_endpoints_refuse_anything_but_the_right_bearer_token(
    client: TestClient, path: str, headers: dict[str, str], query: str
) -> None:
    response = client.get(path + query, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "error" in response.json()
    assert_no_secret(response.text)


def test_stats_with_the_right_bearer_token(client: TestClient) -> None:
    response = client.get(STATS, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200
    body = response.json()
    assert body["activeTier"] == "in-memory"
    assert body["status"] == "healthy"
    for section in ("cache", "memory", "journal", "tiers", "events"):
        assert section in body
    assert [tier["name"] for tier in body["tiers"]] == ["in-memory"]


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    response = client.get(STATS, headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200


def test_cluster_with_the_right_bearer_token(client: TestClient) -> None:
    response = client.get(CLUSTER, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200
    body = response.json()
    assert body["enabled"] is False
    assert body["nodes"] == []
    assert "REDIS_CLUSTER_ENABLED" in body["message"]


def test_no_secret_in_any_response_body(client: TestClient, cache: Cache) -> None:
    assert client.portal is not None
    client.portal.call(cache.set, "k", {"v": 1})
    responses = [
        client.get(HEALTH),
        client.get(STATS, headers=bearer(ADMIN_TOKEN)),
        client.get(CLUSTER, headers=bearer(ADMIN_TOKEN)),
        client.get(STATS, headers=bearer("wrong")),
        client.get(STATS + f"?token={ADMIN_TOKEN}"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 401, 401]
    for response in responses:
        assert_no_secret(response.text)
        for value in response.headers.values():
            assert_no_secret(value)
    with TestClient(create_app(Cache(memory_only(None)))) as unconfigured:
        assert_no_secret(unconfigured.get(STATS).text)


def test_unknown_paths_and_methods(client: TestClient) -> None:
    assert client.get("/api/admin/cache").status_code == 404
    assert client.post(HEALTH).status_code == 405
