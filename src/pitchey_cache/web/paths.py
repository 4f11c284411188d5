"""The endpoints' paths, shared by the app and its clients (``status``) without
importing the web framework."""

from __future__ import annotations

from typing import Final

HEALTH_PATH: Final = "/api/health/cache"
STATS_PATH: Final = "/api/admin/cache/stats"
CLUSTER_PATH: Final = "/api/admin/cache/cluster"
DASHBOARD_PATH: Final = "/api/admin/cache/dashboard"
METRICS_PATH: Final = "/metrics"
OPENAPI_PATH: Final = "/api/openapi.json"
