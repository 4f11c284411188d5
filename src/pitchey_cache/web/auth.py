"""Bearer-token checks for the admin endpoints, in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pitchey_cache.config import Secret


def admin_denial(request: Request, token: Secret | None) -> Response | None:
    """None when the request carries the admin token; otherwise the response to send.

    No token configured: 403 saying how to enable the admin endpoints. A
    missing or wrong token: 401. The token is accepted only in the
    Authorization header, never in a query string that access logs keep.
    """
    if token is None:
        return JSONResponse(
            {"error": "admin endpoints are disabled: set CACHE_ADMIN_TOKEN to enable them"},
            status_code=403,
        )
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = token.reveal().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
        return JSONResponse(
            {"error": "missing or wrong admin token (Authorization: Bearer <CACHE_ADMIN_TOKEN>)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="pitchey-cache admin"'},
        )
    return None
