"""``pitchey-cache``: serve the endpoints, check a configuration, report a running service's
status, run a local cluster."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pitchey_cache.config import Settings
from pitchey_cache.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

# Each sub-command imports what it needs when it runs (the web server for `serve`, the
# Redis driver for `check`, an HTTP client for `status`), so none pays for the others.

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Development tools with their own options; they need no settings.
    if arguments[:1] == ["local-cluster"]:
        from pitchey_cache.devtools.local_cluster import run_local_cluster_command  # noqa: PLC0415

        return run_local_cluster_command(arguments[1:])
    if arguments[:1] == ["upstash-gateway"]:
        from pitchey_cache.devtools.upstash_gateway import (  # noqa: PLC0415
            run_upstash_gateway_command,
        )

        return run_upstash_gateway_command(arguments[1:])
    parser = argparse.ArgumentParser(prog="pitchey-cache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the health, stats and cluster endpoints")
    serve.add_argument("--host", help="listen address (default CACHE_HTTP_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default CACHE_HTTP_PORT, 8080)")
    commands.add_parser("check", help="print the resolved settings and tier chain, probe each tier")
    status = commands.add_parser(
        "status",
        help="a running service's health, tiers and nodes; exit 0 healthy, 1 degraded, "
        "2 unhealthy or unreachable",
        description="Print a running service's health and tiers as a table. Exit 0 when "
        "healthy, 1 when degraded, 2 when unhealthy or unreachable. The admin token "
        "(CACHE_ADMIN_TOKEN, or --token) adds every tier, node roles and recent events; "
        "a refused token is reported on stderr and does not change the exit code.",
    )
    if arguments[:1] == ["status"]:
        # Only `status` needs its options, and they bring its HTTP client.
        from pitchey_cache.status import add_arguments  # noqa: PLC0415

        add_arguments(status)
    commands.add_parser(
        "local-cluster",
        help="up|status|down|kill|stop|cont|restart: a Redis Cluster of local redis-server "
        "processes, for development",
    )
    commands.add_parser(
        "upstash-gateway",
        help="serve Upstash's REST protocol in front of a Redis, for development and tests",
    )
    args = parser.parse_args(arguments)
    if args.command == "status":
        # A client of a running service: it reads only the variables that locate it.
        from pitchey_cache.status import run as run_status  # noqa: PLC0415

        return run_status(args)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pitchey-cache: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        return asyncio.run(_check(settings))
    return _serve(settings, args.host, args.port)


def _serve(settings: Settings, host: str | None, port: int | None) -> int:
    import uvicorn  # noqa: PLC0415

    from pitchey_cache.cache import Cache  # noqa: PLC0415
    from pitchey_cache.web.app import create_app, create_metrics_app  # noqa: PLC0415
    from pitchey_cache.web.logs import redact_tokens_in_access_logs  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cache = Cache(settings)
    except ConfigError as exc:
        print(f"pitchey-cache: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger("pitchey_cache").info("tier chain: %s", " -> ".join(settings.tier_chain()))
    redact_tokens_in_access_logs()
    # Both ports are bound before anything starts, so a port in use is one clear
    # line and exit 1, not a traceback from one listener while the other starts.
    listeners = [(create_app(cache), host or settings.http_host, port or settings.http_port)]
    if settings.metrics_enabled and settings.metrics_port is not None:
        listeners.append((create_metrics_app(cache), settings.metrics_host, settings.metrics_port))
    bound: list[tuple[Starlette, socket.socket]] = []
    log = logging.getLogger("pitchey_cache")
    try:
        for i, (app, address, number) in enumerate(listeners):
            bound.append((app, _bind(address, number)))
            what = "the API" if i == 0 else "/metrics"
            log.info("listening on http://%s:%d for %s", address, number, what)
    except OSError as exc:
        for _, sock in bound:
            sock.close()
        print(f"pitchey-cache: cannot listen: {exc}", file=sys.stderr)
        return 1
    servers = [
        uvicorn.Server(
            # Only the main app's lifespan starts and closes the cache.
            uvicorn.Config(app, log_level="info", lifespan="auto" if i == 0 else "off")
        )
        for i, (app, _) in enumerate(bound)
    ]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_all(servers, [sock for _, sock in bound]))
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{host}:{port}: {exc.strerror}") from None
    return sock


async def _serve_all(servers: list[uvicorn.Server], sockets: list[socket.socket]) -> None:
    """Run every listener; when one stops (Ctrl-C, SIGTERM), stop the others."""
    tasks = [
        asyncio.create_task(server.serve(sockets=[sock]))
        for server, sock in zip(servers, sockets, strict=True)
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


async def _check(settings: Settings) -> int:
    from pitchey_cache.preflight import check_chain, print_reports  # noqa: PLC0415

    print("settings (secrets redacted):")
    for variable, value in settings.describe().items():
        print(f"  {variable}={value}")
    for warning in settings.warnings():
        print(f"warning: {warning}")
    try:
        reports = await check_chain(settings)
    except ConfigError as exc:
        print(f"pitchey-cache: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    unreachable = print_reports(reports)
    if unreachable:
        print(
            f"{unreachable} tier(s) unreachable, in whole or in part; their keys will be "
            "served by the next tier in the chain"
        )
        return 1
    return 0
