"""The operator dashboard in a real browser: Debian's chromium, driven by Playwright.

The app runs under uvicorn on a loopback port, over a ``Cache`` in front of a real
redis-server, with a steady trickle of calls so the chart has something to draw. The
tests log in as an operator would, then kill -9 the server and start it again on the
same port, and check what the page shows. Screenshots go to ``artifacts/dashboard/``.

Playwright's own browser download is never used (it needs the network): without
/usr/bin/chromium (``make browser`` installs it as root) these tests skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    Request,
    ViewportSize,
    expect,
    sync_playwright,
)
from starlette.applications import Starlette
from starlette.routing import Mount

from pitchey_cache import Cache, Secret, Settings, create_app
from pitchey_cache.devtools.local_redis import RedisServer
from pitchey_cache.events import Event
from pitchey_cache.web.app import DASHBOARD_PATH
from tests.integration.conftest import GatewayServer, RedisServerFactory

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"

# The page polls every second and the cache notices an outage within about one; the
# rest is slack for a loaded two-core machine.
TIMEOUT_MS = 15_000
LAPTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)

# Server data the page must show as text: were it parsed as HTML, the image would
# fail to load and its handler would set window.pwned.
HOSTILE_MESSAGE = '<img src="x" onerror="window.pwned = true"><b>not bold</b>'

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (`make browser` as root)",
)


def dashboard_settings(server: RedisServer, token: str) -> Settings:
    """Fast health checks and short timeouts: an outage and a recovery show in a second or two."""
    return Settings(
        redis_host=server.host,
        redis_port=server.port,
        command_timeout_ms=200,
        connect_timeout_ms=200,
        max_failures=3,
        failover_timeout_ms=500,
        health_check_interval_ms=300,
        max_retries=1,
        retry_delay_ms=50,
        admin_token=Secret(token),
    )


async def steady_calls(cache: Cache) -> None:
    """A set and a get every 50 ms, as an application would make them."""
    n = 0
    while True:
        n += 1
        key = f"dashboard:{n % 10}"
        await cache.set(key, n)
        await cache.get(key)
        await asyncio.sleep(0.05)


def served_app(cache: Cache, *, planted: Event | None) -> Starlette:
    """The cache's app mounted in one whose lifespan starts the cache and the calls.

    ``planted`` is emitted into the event log once the cache runs, from the server's
    own event loop.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with cache:
            if planted is not None:
                cache.events.emit(planted)
            calls = asyncio.create_task(steady_calls(cache))
            try:
                yield
            finally:
                calls.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await calls

    return Starlette(routes=[Mount("/", app=create_app(cache))], lifespan=lifespan)


@dataclass
class Dashboard:
    """The served page, and the redis-server behind the cache."""

    redis: RedisServer
    token: str
    http: GatewayServer

    @property
    def url(self) -> str:
        return self.http.url + DASHBOARD_PATH


def serve_dashboard(
    factory: RedisServerFactory, *, planted: Event | None = None
) -> Iterator[Dashboard]:
    redis = factory()
    token = secrets.token_urlsafe(24)
    http = GatewayServer(served_app(Cache(dashboard_settings(redis, token)), planted=planted))
    http.start()
    try:
        yield Dashboard(redis=redis, token=token, http=http)
    finally:
        http.stop()


@pytest.fixture
def dashboard(redis_server_factory: RedisServerFactory) -> Iterator[Dashboard]:
    yield from serve_dashboard(redis_server_factory)


@pytest.fixture
def dashboard_with_hostile_event(redis_server_factory: RedisServerFactory) -> Iterator[Dashboard]:
    planted = Event(datetime.now(UTC), "node-down", "native-redis", HOSTILE_MESSAGE)
    yield from serve_dashboard(redis_server_factory, planted=planted)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page in a fresh browser context, and every request the context made."""

    page: Page
    requests: list[str] = field(default_factory=list)

    def foreign_requests(self, origin: str) -> list[str]:
        """Requests to anything but ``origin`` (scheme, host and port)."""
        expected = urlsplit(origin)
        return [
            url
            for url in self.requests
            if (urlsplit(url).scheme, urlsplit(url).netloc) != (expected.scheme, expected.netloc)
        ]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(TIMEOUT_MS)
    tab = Tab(context.new_page())

    def note(request: Request) -> None:
        tab.requests.append(request.url)

    context.on("request", note)
    try:
        yield tab
    finally:
        context.close()


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def log_in(page: Page, token: str) -> None:
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("login-submit").click()


def node_row(page: Page, server: RedisServer) -> Locator:
    """The server's row in the node table."""
    return page.locator(f'[data-testid="node-row"][data-address="{server.address}"]')


def test_login_wrong_token_reload_logout_and_escaped_server_text(
    dashboard_with_hostile_event: Dashboard, tab: Tab
) -> None:
    d, page = dashboard_with_hostile_event, tab.page
    page.goto(d.url)
    expect(page.get_by_test_id("login")).to_be_visible()
    expect(page.get_by_test_id("dashboard")).to_be_hidden()

    log_in(page, "t\u00f6ken with spaces")
    expect(page.get_by_test_id("login-error")).to_contain_text("printable ASCII")
    log_in(page, "not-" + d.token)
    expect(page.get_by_test_id("login-error")).to_contain_text("Wrong token")
    expect(page.get_by_test_id("dashboard")).to_be_hidden()
    screenshot(page, "login-wrong-token")

    log_in(page, d.token)
    expect(page.get_by_test_id("dashboard")).to_be_visible()
    expect(page.get_by_test_id("login")).to_be_hidden()
    expect(page.get_by_test_id("status")).to_have_text("healthy")

    # The planted message is shown as the text it is, and none of it ran.
    planted = page.get_by_test_id("events").get_by_test_id("event").filter(has_text="not bold")
    expect(planted.locator(".message")).to_have_text(HOSTILE_MESSAGE)
    expect(page.locator("#events img, #events b")).to_have_count(0)
    assert page.evaluate("window.pwned") is None

    # A failed poll shows a banner and keeps the last figures; the next good one clears it.
    page.route("**/api/admin/cache/stats", lambda route: route.abort())
    expect(page.get_by_test_id("poll-error")).to_contain_text("Polling failed")
    expect(page.get_by_test_id("dashboard")).to_have_class(re.compile(r"\bstale\b"))
    expect(page.get_by_test_id("status")).to_have_text("healthy")
    screenshot(page, "poll-failed")
    page.unroute("**/api/admin/cache/stats")
    expect(page.get_by_test_id("poll-error")).to_be_hidden()
    expect(page.get_by_test_id("dashboard")).not_to_have_class(re.compile(r"\bstale\b"))

    # A reload keeps the token (sessionStorage); logging out forgets it.
    page.reload()
    expect(page.get_by_test_id("dashboard")).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_text("healthy")
    expect(page.get_by_test_id("login")).to_be_hidden()
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login")).to_be_visible()
    expect(page.get_by_test_id("dashboard")).to_be_hidden()
    assert page.evaluate("Object.keys(sessionStorage)") == []
    page.reload()
    expect(page.get_by_test_id("login")).to_be_visible()

    assert tab.foreign_requests(d.http.url) == []


def test_kill_9_shows_degraded_then_healthy_after_restart(dashboard: Dashboard, tab: Tab) -> None:
    d, page = dashboard, tab.page
    page.goto(d.url)
    log_in(page, d.token)

    row = node_row(page, d.redis)
    native = page.get_by_test_id("tier-native-redis")
    expect(page.get_by_test_id("status")).to_have_text("healthy")
    expect(page.get_by_test_id("active-tier")).to_have_text("native-redis")
    expect(native).to_have_attribute("data-active", "true")
    expect(native).to_have_attribute("data-condition", "healthy")
    expect(row).to_be_visible()
    expect(row.get_by_test_id("node-healthy")).to_have_text("yes")
    expect(row).to_contain_text("master")
    # Two polls with calls in between make the first stretch of line (a flat line at
    # 100% has no height, so Playwright would call it hidden: count it instead).
    expect(page.locator("#rate-chart polyline")).not_to_have_count(0)
    expect(page.locator("#latency-chart polyline")).not_to_have_count(0)
    expect(page.get_by_test_id("rate-now")).to_contain_text("100%")
    screenshot(page, "1-healthy", full_page=True)

    killed_at = time.perf_counter()
    d.redis.kill()
    expect(page.get_by_test_id("status")).to_have_text("degraded")
    expect(page.get_by_test_id("active-tier")).to_have_text("in-memory")
    expect(page.get_by_test_id("tier-in-memory")).to_have_attribute("data-active", "true")
    expect(native).to_have_attribute("data-condition", "down")
    expect(row).to_have_attribute("data-healthy", "false")
    expect(row.get_by_test_id("node-healthy")).to_have_text("no")
    failover = page.locator('[data-testid="event"][data-kind="failover"]')
    expect(failover.first).to_contain_text("serving from in-memory")
    shown_degraded_s = time.perf_counter() - killed_at
    screenshot(page, "2-degraded", full_page=True)

    page.set_viewport_size(PHONE)
    expect(row).to_be_visible()
    # Readable on a phone: nothing wider than the screen, the table stacked into cards.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "3-degraded-phone", full_page=True)
    page.set_viewport_size(LAPTOP)

    restarted_at = time.perf_counter()
    d.redis.start()
    expect(page.get_by_test_id("status")).to_have_text("healthy")
    expect(page.get_by_test_id("active-tier")).to_have_text("native-redis")
    expect(native).to_have_attribute("data-active", "true")
    expect(row.get_by_test_id("node-healthy")).to_have_text("yes")
    expect(page.locator('[data-testid="event"][data-kind="failback"]').first).to_be_visible()
    shown_healthy_s = time.perf_counter() - restarted_at
    screenshot(page, "4-recovered", full_page=True)

    print(
        f"\n[dashboard] degraded shown {shown_degraded_s:.2f}s after kill -9, "
        f"healthy shown {shown_healthy_s:.2f}s after the restart"
    )
    assert tab.foreign_requests(d.http.url) == []
