"""``create_app(cache)``: the guide's endpoints, metrics, the dashboard and the API document.

Mountable in Starlette or FastAPI. Routes:

- ``GET /api/health/cache``: public, the guide's shape; 503 when unhealthy, and with
  ``?strict=true`` (a readiness probe) also while a fallback tier serves.
- ``GET /api/admin/cache/stats`` and ``/cluster``: admin token.
- ``GET /api/admin/cache/dashboard``: a self-contained page that asks for the
  admin token and polls the two admin endpoints.
- ``GET /metrics``: Prometheus text; admin token unless CACHE_METRICS_AUTH=false;
  absent when CACHE_METRICS_ENABLED=false or CACHE_METRICS_PORT gives it a
  listener of its own (:func:`create_metrics_app`).
- ``GET /api/openapi.json``: the OpenAPI document of all of the above.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from functools import cache as once
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pitchey_cache.cache import Cache
from pitchey_cache.snapshot import cluster_body, stats_body
from pitchey_cache.web.auth import admin_denial
from pitchey_cache.web.paths import (
    CLUSTER_PATH,
    DASHBOARD_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    STATS_PATH,
)

__all__ = [
    "CLUSTER_PATH",
    "DASHBOARD_PATH",
    "HEALTH_PATH",
    "METRICS_PATH",
    "OPENAPI_PATH",
    "STATS_PATH",
    "create_app",
    "create_metrics_app",
    "openapi_document",
]

_NO_STORE = {"Cache-Control": "no-store"}
_STRICT = {"true": True, "false": False}
# The page may talk only to this server, never be framed (the token form), and
# never send the token anywhere in a URL.
_PAGE_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@once
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document shipped with the package (``web/openapi.json``)."""
    text = resources.files("pitchey_cache.web").joinpath("openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@once
def _dashboard_page() -> str:
    return resources.files("pitchey_cache.web").joinpath("dashboard.html").read_text("utf-8")


def _metrics_route(cache: Cache) -> Route:
    # prometheus_client is loaded only by an app that serves /metrics.
    from pitchey_cache.metrics import CONTENT_TYPE  # noqa: PLC0415

    async def metrics(request: Request) -> Response:
        if cache.settings.metrics_auth:
            denial = admin_denial(request, cache.settings.admin_token)
            if denial is not None:
                return denial
        return Response(cache.metrics.render(), media_type=CONTENT_TYPE, headers=_NO_STORE)

    return Route(METRICS_PATH, metrics, methods=["GET"])


def _lifespan(cache: Cache) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        owned = not cache.started
        if owned:
            await cache.start()
        try:
            yield
        finally:
            if owned:
                await cache.close()

    return lifespan


def create_app(cache: Cache) -> Starlette:
    """An ASGI app serving the cache's endpoints (see the module docstring).

    Run on its own, its lifespan starts and closes the cache. Mounted inside
    another app, whose lifespan then runs instead, start the cache there
    (``async with cache:``).
    """

    async def health(request: Request) -> Response:
        strict = _STRICT.get(request.query_params.get("strict", "false").lower())
        if strict is None:
            return JSONResponse(
                {"error": "strict must be true or false"}, status_code=400, headers=_NO_STORE
            )
        body = await cache.health()
        # Strict is for readiness probes: not ready while calls go to a fallback tier.
        ready = body["status"] != "unhealthy" and (not strict or cache.preferred_tier_serving)
        return JSONResponse(body, status_code=200 if ready else 503, headers=_NO_STORE)

    async def stats(request: Request) -> Response:
        denial = admin_denial(request, cache.settings.admin_token)
        return denial or JSONResponse(stats_body(cache.snapshot()), headers=_NO_STORE)

    async def cluster(request: Request) -> Response:
        denial = admin_denial(request, cache.settings.admin_token)
        return denial or JSONResponse(cluster_body(cache.snapshot()), headers=_NO_STORE)

    async def dashboard(request: Request) -> Response:
        # The page holds no data; it asks for the token and sends it with each poll.
        if cache.settings.admin_token is None:
            return admin_denial(request, None) or Response(status_code=403)
        return HTMLResponse(_dashboard_page(), headers=_PAGE_HEADERS)

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document())

    routes = [
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route(STATS_PATH, stats, methods=["GET"]),
        Route(CLUSTER_PATH, cluster, methods=["GET"]),
        Route(DASHBOARD_PATH, dashboard, methods=["GET"]),
        Route(OPENAPI_PATH, openapi, methods=["GET"]),
    ]
    s = cache.settings
    if s.metrics_enabled and s.metrics_port is None:
        routes.append(_metrics_route(cache))
    return Starlette(routes=routes, lifespan=_lifespan(cache))


def create_metrics_app(cache: Cache) -> Starlette:
    """``/metrics`` alone, for the listener CACHE_METRICS_HOST:CACHE_METRICS_PORT.

    Its lifespan does not start the cache: the main app's does.
    """
    return Starlette(routes=[_metrics_route(cache)])
