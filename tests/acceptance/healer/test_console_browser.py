"""The web console in headless Chromium, on a real `taskmedic healer` (webhook, executor, journal).

Chromium is Debian's `chromium` package driven by Playwright for Python (never a downloaded
browser). Without /usr/bin/chromium these tests skip, except in CI where they fail. Screenshots
go to test-artifacts/<test name>/.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.services import ROOT, need_or_skip
from tests.support.log_helpers import (
    PASSWORD,
    USER,
    USER_AUTH,
    HealerProcess,
    add_host_run,
    append_chunk,
    create_action,
    fire,
    set_paused,
    set_state,
    start_healer,
    write_config,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

TICKS = 25  # one line every 200 ms for 5 s
TICKER = (
    "import time\n"
    f"for i in range({TICKS}):\n"
    "    print(f'line {i} of the ticker', flush=True)\n"
    "    time.sleep(0.2)\n"
)
# A screenful at once, then a line every 200 ms for 4 s: enough to scroll.
CHATTY = (
    "import sys, time\n"
    "for i in range(80):\n"
    "    print(f'burst {i}')\n"
    "sys.stdout.flush()\n"
    "for i in range(20):\n"
    "    print(f'later {i}', flush=True)\n"
    "    time.sleep(0.2)\n"
)
RULES: list[dict[str, Any]] = [
    {
        "name": "ticker",
        "match": {"alertname": "TestTicker"},
        "steps": [
            {
                "name": "print a line every 200 ms",
                "script": {"argv": [sys.executable, "-c", TICKER]},
            }
        ],
    },
    {
        "name": "chatty",
        "match": {"alertname": "TestChatty"},
        "steps": [{"name": "print a lot", "script": {"argv": [sys.executable, "-c", CHATTY]}}],
    },
    {
        "name": "needs-approval",
        "match": {"alertname": "TestGated"},
        "approval": True,
        "steps": [
            {"name": "say it ran", "script": {"argv": ["/bin/echo", "approved and ran"]}},
        ],
    },
]

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None  # type: ignore[assignment]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """test-artifacts/<test name>/, emptied of old screenshots."""
    folder = ROOT / "test-artifacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture
def healer(journal_dsn: str, tmp_path: Path) -> Iterator[HealerProcess]:
    need_or_skip(CHROMIUM.exists(), f"Chromium ({CHROMIUM})")
    proc = start_healer(write_config(tmp_path, journal_dsn, RULES), tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
async def browser(healer: HealerProcess) -> AsyncIterator[Browser]:
    need_or_skip(async_playwright is not None, "Playwright for Python")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def logged_in_page(browser: Browser, healer: HealerProcess, viewport: dict[str, int]) -> Page:
    """A page that went to the console, was sent to the login form, and logged in there as the
    user who may approve."""
    context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.goto(f"{healer.url}/")
    assert page.url.startswith(f"{healer.url}/login")
    await page.fill("input[name=username]", USER)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#actions")
    assert "password" not in page.url
    assert PASSWORD not in page.url
    return page


async def state_of(dsn: str, action_id: int) -> str:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT state FROM actions WHERE id = %s", (action_id,))
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def plan_hash_of(dsn: str, action_id: int) -> str:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT plan_hash FROM actions WHERE id = %s", (action_id,))
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def log_text(page: Page) -> str:
    return str(await page.eval_on_selector("#log", "el => el.textContent"))


async def wait_log(page: Page, text: str, timeout: float = 30) -> None:
    # Locator assertions poll without eval(), which the console's CSP forbids (as it should).
    await expect(page.locator("#log")).to_contain_text(text, timeout=timeout * 1000)


async def no_sideways_scroll(page: Page) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"] if page.viewport_size else True


async def test_action_page_shows_output_while_it_runs_and_the_last_line_at_the_end(
    browser: Browser, healer: HealerProcess, journal_dsn: str, artifacts: Path
) -> None:
    """Fire an alert whose script prints a line every 200 ms for 5 s: the page shows the first
    line before the action ends, the final line after, and the final state."""
    (action_id,) = await fire(healer, {"alertname": "TestTicker", "instance": "web-1"})
    page = await logged_in_page(browser, healer, LAPTOP)
    row = page.locator(f'#rows a[href="/actions/{action_id}"]').first
    await row.wait_for()
    await page.screenshot(path=str(artifacts / "list-laptop.png"), full_page=True)

    await row.click()
    await page.wait_for_url(f"{healer.url}/actions/{action_id}")
    await wait_log(page, "line 0 of the ticker")
    assert await state_of(journal_dsn, action_id) == "running"
    assert f"line {TICKS - 1} of the ticker" not in await log_text(page)
    await page.screenshot(path=str(artifacts / "action-running-laptop.png"), full_page=True)

    await wait_log(page, f"line {TICKS - 1} of the ticker")
    await expect(page.locator("#log-status")).to_have_text("ended: succeeded")
    await page.locator("#state", has_text="succeeded").wait_for()
    text = await log_text(page)
    lines = [ln for ln in text.splitlines() if "of the ticker" in ln]
    assert lines == [f"line {i} of the ticker" for i in range(TICKS)]  # in order, no repeats
    assert await state_of(journal_dsn, action_id) == "succeeded"
    await page.screenshot(path=str(artifacts / "action-done-laptop.png"), full_page=True)


async def test_approve_a_waiting_action_by_clicking(
    browser: Browser, healer: HealerProcess, journal_dsn: str, artifacts: Path
) -> None:
    """The approver sees the plan and its hash, clicks Approve, and the action runs."""
    (action_id,) = await fire(healer, {"alertname": "TestGated", "instance": "db-1"})
    page = await logged_in_page(browser, healer, LAPTOP)
    await page.goto(f"{healer.url}/actions/{action_id}")
    await page.locator("#state", has_text="awaiting approval").wait_for()
    plan = page.locator("#plan")
    assert await plan.get_attribute("open") is not None
    assert "/bin/echo 'approved and ran'" in await plan.inner_text()
    await page.screenshot(path=str(artifacts / "awaiting-approval-laptop.png"), full_page=True)

    # Two clicks: "Approve…" shows the whole plan hash and the button that runs it.
    assert not await page.is_visible("#approve")
    await page.click("#approve-confirm summary")
    plan_hash = await plan_hash_of(journal_dsn, action_id)
    await expect(page.locator("#approve-confirm")).to_contain_text(plan_hash)
    await page.screenshot(path=str(artifacts / "approve-confirm-laptop.png"), full_page=True)
    await page.click("#approve")
    await wait_log(page, "approved and ran")
    await page.locator("#state", has_text="succeeded").wait_for()
    assert await page.locator("#approve").count() == 0
    async with await psycopg.AsyncConnection.connect(journal_dsn) as conn:
        cur = await conn.execute(
            "SELECT state, approved_by FROM actions WHERE id = %s", (action_id,)
        )
        assert await cur.fetchone() == ("succeeded", USER)  # the person, by name
    await page.screenshot(path=str(artifacts / "approved-laptop.png"), full_page=True)


async def test_logging_out_ends_the_session_even_for_a_copy_of_its_cookie(
    browser: Browser, healer: HealerProcess
) -> None:
    """Log out by clicking: the console asks to log in again, and the cookie the browser had
    (put back as a thief would) opens nothing."""
    page = await logged_in_page(browser, healer, LAPTOP)
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "taskmedic_session"]
    await page.click("form.logout button")
    await page.wait_for_url(f"{healer.url}/login")
    await page.context.add_cookies(
        [{"name": cookie["name"], "value": cookie["value"], "url": healer.url}]
    )
    await page.goto(f"{healer.url}/")
    assert page.url.startswith(f"{healer.url}/login")
    await expect(page.locator("input[name=username]")).to_be_visible()


async def test_auto_scroll_follows_new_output_until_the_reader_scrolls_up(
    browser: Browser, healer: HealerProcess, artifacts: Path
) -> None:
    (action_id,) = await fire(healer, {"alertname": "TestChatty", "instance": "w"})
    page = await logged_in_page(browser, healer, LAPTOP)
    await page.goto(f"{healer.url}/actions/{action_id}")
    await wait_log(page, "later 1")
    at_bottom = "el => el.scrollTop + el.clientHeight >= el.scrollHeight - 8"
    assert await page.eval_on_selector("#log", at_bottom)  # followed the burst down
    assert not await page.is_visible("#jump")

    await page.eval_on_selector("#log", "el => { el.scrollTop = 0; }")
    await page.wait_for_selector("#jump", state="visible")
    await wait_log(page, "later 5")
    assert await page.eval_on_selector("#log", "el => el.scrollTop") == 0  # left where it was
    await page.screenshot(path=str(artifacts / "scrolled-up-laptop.png"))

    await page.click("#jump")
    await wait_log(page, "later 8")
    assert await page.eval_on_selector("#log", at_bottom)


async def test_pages_fit_a_phone_screen_and_the_list_refreshes_itself(
    browser: Browser, healer: HealerProcess, journal_dsn: str, artifacts: Path
) -> None:
    """390x844: no sideways scrolling; the list (refreshing on its own), the action and its
    live log are usable."""
    (action_id,) = await fire(healer, {"alertname": "TestTicker", "instance": "phone"})
    (gated,) = await fire(healer, {"alertname": "TestGated", "instance": "phone"})
    page = await logged_in_page(browser, healer, PHONE)
    await page.locator(f'#rows a[href="/actions/{action_id}"]').first.wait_for()
    await no_sideways_scroll(page)
    await page.screenshot(path=str(artifacts / "list-phone.png"), full_page=True)

    # The list refreshes by itself: approved elsewhere (the API), the row turns succeeded.
    gated_badge = page.locator(f"#rows tr:has(a[href='/actions/{gated}']) .badge")
    await expect(gated_badge).to_have_text("awaiting approval")
    plan_hash = await plan_hash_of(journal_dsn, gated)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{healer.url}/api/actions/{gated}/approve",
            json={"plan_hash": plan_hash},
            headers=USER_AUTH,
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    await expect(gated_badge).to_have_text("succeeded", timeout=20_000)

    await page.goto(f"{healer.url}/actions/{action_id}")
    await wait_log(page, "line 3 of the ticker")
    await no_sideways_scroll(page)
    await page.screenshot(path=str(artifacts / "action-running-phone.png"), full_page=True)
    await wait_log(page, f"line {TICKS - 1} of the ticker")
    await page.locator("#state", has_text="succeeded").wait_for()
    await page.screenshot(path=str(artifacts / "action-done-phone.png"), full_page=True)

    # Approving on a phone: the whole plan hash wraps inside the screen.
    (waiting,) = await fire(healer, {"alertname": "TestGated", "instance": "phone-2"})
    await page.goto(f"{healer.url}/actions/{waiting}")
    await page.click("#approve-confirm summary")
    await expect(page.locator("#approve")).to_be_visible()
    await no_sideways_scroll(page)
    await page.screenshot(path=str(artifacts / "approve-confirm-phone.png"), full_page=True)


async def test_a_step_on_other_hosts_shows_each_hosts_run_and_live_output_and_resumes(
    browser: Browser,
    healer: HealerProcess,
    journal_dsn: str,
    journal_conn: psycopg.AsyncConnection[Any],
    artifacts: Path,
) -> None:
    """A multi-host step (written to the journal as the agents would): a row per host, each
    host's lines tagged `[host]` as they arrive, a filter that shows one host's lines (new ones
    too), and Resume for a step paused between batches; on a phone too."""
    aid = await create_action(journal_conn, steps=2)
    await append_chunk(journal_conn, aid, "local step\n")
    await add_host_run(journal_conn, aid, "web1", step=1, state="running")
    await add_host_run(journal_conn, aid, "web2", step=1, exit_code=0, seconds=0.8)
    await add_host_run(journal_conn, aid, "web3", step=1, state="pending", batch=1)
    await set_paused(journal_conn, aid)
    page = await logged_in_page(browser, healer, LAPTOP)
    await page.goto(f"{healer.url}/actions/{aid}")
    await wait_log(page, "local step")

    await append_chunk(journal_conn, aid, "web1 first ", step=1, host="web1")
    await append_chunk(journal_conn, aid, "web2 done\n", step=1, host="web2")
    await append_chunk(journal_conn, aid, "half\nweb1 second\n", step=1, host="web1")
    await wait_log(page, "[web1] web1 second")
    text = await log_text(page)
    assert "[web1] web1 first [web2] web2 done\nhalf\n[web1] web1 second\n" in text
    hosts = page.locator("#hosts-1")
    await expect(hosts.locator("tr[data-host=web1] .badge")).to_have_text("running")
    await expect(hosts.locator("tr[data-host=web2] .badge")).to_have_text("succeeded")
    await expect(page.locator("#paused")).to_be_visible()
    await page.screenshot(path=str(artifacts / "hosts-laptop.png"), full_page=True)

    # One host's output: the others' lines hide, and that host's new lines still arrive.
    await page.locator("#hosts-1 a[data-log-host=web1]").click()
    await expect(page.locator("#log-host")).to_have_value("web1")
    await expect(page.locator("#log span[data-host=web2]").first).to_be_hidden()
    await expect(page.locator("#log span[data-host='']").first).to_be_hidden()
    await append_chunk(journal_conn, aid, "web2 more\n", step=1, host="web2")
    await append_chunk(journal_conn, aid, "web1 third\n", step=1, host="web1")
    await wait_log(page, "[web1] web1 third")
    await expect(page.locator("#log span[data-host=web2]").last).to_be_hidden()
    await expect(page.locator("#log span[data-host=web1]").last).to_be_visible()
    await page.screenshot(path=str(artifacts / "hosts-one-host-laptop.png"), full_page=True)
    await page.select_option("#log-host", "*")
    await expect(page.locator("#log span[data-host=web2]").last).to_be_visible()

    await page.click("#resume")
    await expect(page.locator("#resume")).to_have_count(0, timeout=20_000)
    async with await psycopg.AsyncConnection.connect(journal_dsn) as conn:
        cur = await conn.execute("SELECT resumed_by FROM actions WHERE id = %s", (aid,))
        assert await cur.fetchone() == (USER,)

    phone = await logged_in_page(browser, healer, PHONE)
    await phone.goto(f"{healer.url}/actions/{aid}")
    await wait_log(phone, "[web1] web1 third")
    await expect(phone.locator("#hosts-1 tr[data-host=web2]")).to_be_visible()
    await no_sideways_scroll(phone)
    await phone.screenshot(path=str(artifacts / "hosts-phone.png"), full_page=True)

    await set_state(journal_conn, aid, "succeeded")
    await expect(page.locator("#log-status")).to_have_text("ended: succeeded")
