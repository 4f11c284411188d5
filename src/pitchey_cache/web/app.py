"""``create_app(cache)``: the guide's three endpoints, mountable in Starlette or FastAPI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pitchey_cache.cache import Cache
from pitchey_cache.web.auth import admin_denial


def create_app(cache: Cache) -> Starlette:
    """An ASGI app serving the cache's health, stats and cluster bodies.

    Run on its own, its lifespan starts and closes the cache. Mounted inside
    another app, whose lifespan then runs instead, start the cache there
    (``async with cache:``).
    """

    async def health(_request: Request) -> Response:
        body = await cache.health()
        return JSONResponse(body, status_code=503 if body["status"] == "unhealthy" else 200)

    async def stats(request: Request) -> Response:
        denial = admin_denial(request, cache.settings.admin_token)
        return denial or JSONResponse(await cache.stats())

    async def cluster(request: Request) -> Response:
        denial = admin_denial(request, cache.settings.admin_token)
        return denial or JSONResponse(await cache.cluster_info())

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

    return Starlette(
        routes=[
            Route("/api/health/cache", health, methods=["GET"]),
            Route("/api/admin/cache/stats", stats, methods=["GET"]),
            Route("/api/admin/cache/cluster", cluster, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
