"""The exporter's own page (`/`) on a phone, in headless Chromium: no sideways scrolling.

Chromium is Debian's `chromium` driven by Playwright for Python, as for the console's tests;
without /usr/bin/chromium this skips, except in CI where it fails. The screenshot goes to
test-artifacts/<test name>/ (docs/screenshots/ holds a copy for the README).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from exporter.web import create_app
from tests.acceptance.healer.test_console_browser import CHROMIUM, CHROMIUM_ARGS, PHONE
from tests.services import ROOT, need_or_skip
from tests.support.exporter_helpers import config_from, pg_exec

pytestmark = pytest.mark.browser

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None  # type: ignore[assignment]


async def test_the_exporters_page_fits_a_phone_screen(
    pg_dsn: str,
    broker_url: str,
    tmp_path: Path,
    aiohttp_client: Any,
    request: pytest.FixtureRequest,
) -> None:
    """390x844 with what makes the page wide: nine columns of checks, a long error from a
    database that refuses connections, a cluster without task events, periodic tasks."""
    need_or_skip(CHROMIUM.exists(), f"Chromium ({CHROMIUM})")
    need_or_skip(async_playwright is not None, "Playwright for Python")
    pg_exec(pg_dsn, "CREATE TABLE cache (k int, at timestamptz)")
    pg_exec(pg_dsn, "INSERT INTO cache VALUES (1, now() - interval '1 hour')")
    data = {
        "databases": {
            "app": {"dsn": pg_dsn},
            "gone": {"dsn": "postgresql://reader@127.0.0.1:1/application_database_name"},
        },
        "celery": {"main": {"broker": broker_url}},
        "exporter": {"interval": "1s"},
        "checks": [
            {
                "name": "tree_status_cache_of_the_reporting_service",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": "SELECT k, at FROM cache",
            },
            {
                "name": "imports",
                "type": "stale_status",
                "database": "gone",
                "max_age": "10m",
                "query": "SELECT k, at FROM cache",
            },
        ],
        "periodic_tasks": [
            {"cluster": "main", "task": "reports.tasks.rebuild_every_tree", "expect_every": "3m"}
        ],
    }
    client = await aiohttp_client(create_app(config_from(tmp_path, data)))
    folder = ROOT / "test-artifacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=PHONE)  # type: ignore[arg-type]
            url = str(client.make_url("/"))
            # Wait for the failing check's error: the widest thing the page shows.
            for _ in range(60):
                await page.goto(url)
                if "cannot connect" in await page.inner_text("body"):
                    break
                await page.wait_for_timeout(250)
            await expect(page.locator("body")).to_contain_text("cannot connect")
            await page.screenshot(path=str(folder / "exporter-phone.png"), full_page=True)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"]
        finally:
            await browser.close()
