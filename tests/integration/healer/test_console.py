"""The web console: login by form, the pages, and the guard against cross-site requests."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from healer.console.session import CSRF_HEADER
from tests.support.log_helpers import (
    PASSWORD,
    TOKEN,
    USER,
    append_chunk,
    create_action,
    make_app,
    set_state,
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(
    journal_dsn: str,
    journal_conn: psycopg.AsyncConnection[Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    app = make_app(journal_dsn, auth=True)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # A state-changing route behind the same middlewares as the API's approve and cancel.
    app.router.add_post("/api/test-post", echo)
    return await aiohttp_client(app)


async def log_in(client: Client, **form: str) -> Any:
    return await client.post(
        "/login", data=form or {"token": TOKEN}, allow_redirects=False, headers=same_origin(client)
    )


def same_origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://{client.server.host}:{client.server.port}"}


def csrf_of(html: str) -> str:
    m = re.search(r'<meta name="csrf-token" content="([0-9a-f]*)">', html)
    assert m is not None
    return m.group(1)


async def test_a_browser_without_a_session_is_sent_to_the_login_form(client: Client) -> None:
    """No session: pages redirect to /login (keeping where to come back), never a 500 or a
    bare password prompt; the login form and the console's own files load without one."""
    resp = await client.get("/actions/7?x=1", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=/actions/7?x=1"
    resp = await client.get("/", allow_redirects=False)
    assert resp.headers["Location"] == "/login?next=/"
    resp = await client.get("/login", params={"next": "/actions/7"})
    assert resp.status == 200
    html = await resp.text()
    assert 'method="post" action="/login"' in html
    assert 'value="/actions/7"' in html
    assert (await client.get("/static/console.css")).status == 200
    assert (await client.get("/static/console.js")).status == 200
    assert (await client.get("/static/..%2Fsession.py")).status == 404
    # A name no file system accepts is simply not one of the console's files.
    assert (await client.get("/static/" + "a" * 300 + ".css")).status == 404
    # The API itself still answers 401 to anyone without credentials.
    assert (await client.get("/api/actions/1/log")).status == 401
    # A script's refresh gets a 401 it can act on, not a redirect to follow.
    resp = await client.get("/", params={"fragment": "rows"}, allow_redirects=False)
    assert resp.status == 401


@pytest.mark.parametrize(
    "form",
    [{"token": TOKEN}, {"username": USER, "password": PASSWORD}],
    ids=["token", "username-password"],
)
async def test_login_sets_a_strict_httponly_session_cookie(
    client: Client, form: dict[str, str]
) -> None:
    """The right token or username/password gives a session cookie scripts and other sites
    cannot use, then the pages and the API open with it."""
    resp = await log_in(client, **form, next="/actions/3")
    assert resp.status == 303
    assert resp.headers["Location"] == "/actions/3"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("taskmedic_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert TOKEN not in cookie
    assert PASSWORD not in cookie
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 200
    assert "Log out" in await resp.text()


async def test_wrong_credentials_are_refused_and_the_token_never_goes_in_a_url(
    client: Client,
) -> None:
    resp = await log_in(client, token="wrong")
    assert resp.status == 401
    assert "Set-Cookie" not in resp.headers
    assert "Wrong token" in await resp.text()
    resp = await log_in(client, username=USER, password="wrong")
    assert resp.status == 401
    resp = await log_in(client, username=USER)
    assert resp.status == 401
    # A token in the query string logs nobody in.
    resp = await client.get("/login", params={"token": TOKEN}, allow_redirects=False)
    assert "Set-Cookie" not in resp.headers
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_login_redirects_only_within_the_site(client: Client) -> None:
    """`next` pointing elsewhere (an open redirect) sends the user to / instead."""
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        resp = await log_in(client, token=TOKEN, next=target)
        assert resp.headers["Location"] == "/", target


async def test_logout_ends_the_session(client: Client) -> None:
    await log_in(client)
    html = await (await client.get("/")).text()
    resp = await client.post(
        "/logout",
        data={"csrf_token": csrf_of(html)},
        allow_redirects=False,
        headers=same_origin(client),
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/login"
    assert 'taskmedic_session=""' in resp.headers["Set-Cookie"]
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_cookie_authenticated_posts_need_the_pages_csrf_token_and_same_origin(
    client: Client,
) -> None:
    """Another site cannot make a logged-in browser approve or cancel anything."""
    await log_in(client)
    token = csrf_of(await (await client.get("/")).text())
    assert token
    ok = {CSRF_HEADER: token, **same_origin(client)}
    assert (await client.post("/api/test-post", headers=ok)).status == 200
    assert (await client.post("/api/test-post", headers=same_origin(client))).status == 403
    bad_token = {CSRF_HEADER: "0" * 64, **same_origin(client)}
    assert (await client.post("/api/test-post", headers=bad_token)).status == 403
    cross = {CSRF_HEADER: token, "Origin": "https://evil.example"}
    assert (await client.post("/api/test-post", headers=cross)).status == 403
    fetch_meta = {CSRF_HEADER: token, "Sec-Fetch-Site": "cross-site"}
    assert (await client.post("/api/test-post", headers=fetch_meta)).status == 403
    # Alertmanager and scripts send credentials, no cookie: nothing changes for them.
    client.session.cookie_jar.clear()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/api/test-post", headers=bearer)).status == 200


async def test_action_list_shows_state_rule_alert_start_and_duration_and_filters(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    a1 = await create_action(journal_conn, rule="refresh-tree-status", state="succeeded")
    a2 = await create_action(
        journal_conn,
        rule="fail-stuck-timelines",
        state="running",
        labels={"alertname": "TaskmedicOrphanTasks", "check": "timelines"},
    )
    a3 = await create_action(journal_conn, rule="fail-stuck-timelines", state="awaiting_approval")
    await log_in(client)
    html = await (await client.get("/")).text()
    for aid in (a1, a2, a3):
        assert f'href="/actions/{aid}"' in html
    assert html.index(f"/actions/{a3}") < html.index(f"/actions/{a1}")  # newest first
    assert "TaskmedicOrphanTasks" in html
    assert "awaiting approval" in html
    assert "3.0 s" in html  # the finished action's duration
    assert "so far" in html  # the running one's
    assert '<option value="fail-stuck-timelines">' in html

    html = await (await client.get("/", params={"state": "running"})).text()
    assert f"/actions/{a2}" in html
    assert f"/actions/{a1}" not in html
    html = await (await client.get("/", params={"rule": "fail-stuck-timelines"})).text()
    assert f"/actions/{a2}" in html
    assert f"/actions/{a3}" in html
    assert f"/actions/{a1}" not in html
    rows = await (await client.get("/", params={"fragment": "rows", "state": "running"})).text()
    assert rows.lstrip().startswith("<tr")
    assert f"/actions/{a2}" in rows
    assert "<html" not in rows
    resp = await client.get("/", params={"state": "bogus"})
    assert resp.status == 400


async def test_action_page_shows_steps_plan_and_the_buttons_its_state_allows(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    waiting = await create_action(journal_conn, state="awaiting_approval", steps=2)
    done = await create_action(journal_conn, state="running")
    await append_chunk(journal_conn, done, "hello\n")
    await set_state(journal_conn, done, "succeeded", step_state="succeeded")
    await log_in(client)

    html = await (await client.get(f"/actions/{waiting}")).text()
    cur = await journal_conn.execute("SELECT plan_hash FROM actions WHERE id = %s", (waiting,))
    (plan_hash,) = await cur.fetchone()  # type: ignore[misc]
    assert f'data-plan-hash="{plan_hash}"' in html
    assert f'data-post="/api/actions/{waiting}/approve"' in html
    assert f'data-post="/api/actions/{waiting}/cancel"' in html
    assert "/bin/echo &#39;hello 1&#39;" in html  # the rendered argv of step 2
    assert '<details id="plan" open>' in html  # the plan is in view for the approver
    assert "step 0" in html
    assert "step 1" in html
    assert f'data-src="/api/actions/{waiting}/log?follow=1"' in html

    html = await (await client.get(f"/actions/{done}")).text()
    assert "/approve" not in html
    assert "/cancel" not in html
    assert "succeeded" in html
    assert "data-poll" not in html  # a finished action needs no refreshing
    frag = await (await client.get(f"/actions/{done}", params={"fragment": "detail"})).text()
    assert "<html" not in frag
    assert "Steps" in frag
    assert (await client.get("/actions/99999")).status == 404


async def test_pages_escape_what_alerts_put_in_labels(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """A label value is text on the page, never markup or script."""
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    aid = await create_action(journal_conn, labels={"alertname": evil, "instance": evil})
    await log_in(client)
    for path in ("/", f"/actions/{aid}"):
        resp = await client.get(path)
        html = await resp.text()
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_without_credentials_on_loopback_the_console_opens_without_login(
    journal_dsn: str,
    journal_conn: psycopg.AsyncConnection[Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """The laptop demo (allow_unauthenticated on 127.0.0.1): no login form in the way."""
    client = await aiohttp_client(make_app(journal_dsn, auth=False))
    aid = await create_action(journal_conn)
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 200
    assert f"/actions/{aid}" in await resp.text()
    resp = await client.get("/login", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/")
