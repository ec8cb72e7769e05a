"""The web console: login by form, the pages, and the guard against cross-site requests."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from healer.app import create_app
from healer.config import HealerConfig
from healer.console.session import CSRF_HEADER, SESSION_COOKIE
from tests.support.log_helpers import (
    AUTH_CONFIG,
    PASSWORD,
    TOKEN,
    USER,
    add_host_run,
    append_chunk,
    create_action,
    make_app,
    set_paused,
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
        "/login",
        data=form or {"username": USER, "password": PASSWORD},
        allow_redirects=False,
        headers=same_origin(client),
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


async def test_a_step_shows_its_output_size_only_when_it_printed_something(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """A step whose only output is taskmedic's own line (an SQL or HTTP step) is not "0 B"."""
    quiet = await create_action(journal_conn, state="running")
    await append_chunk(
        journal_conn, quiet, "sql on app: UPDATE 3 rows (committed)\n", stream="system"
    )
    await set_state(journal_conn, quiet, "succeeded", step_state="succeeded")
    loud = await create_action(journal_conn, state="running")
    await journal_conn.execute(
        "UPDATE steps SET output_bytes = 2048, state = 'succeeded', started_at = now(),"
        " finished_at = now() WHERE action_id = %s",
        (loud,),
    )
    await log_in(client)
    html = await (await client.get(f"/actions/{quiet}")).text()
    assert "0 B" not in html
    html = await (await client.get(f"/actions/{loud}")).text()
    assert "2.0 KiB printed" in html


async def test_approving_asks_first_and_shows_the_whole_plan_hash(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """The first click opens the full hash and the button that runs the plan (a <details>,
    kept open across the page's refreshes); only that second button posts."""
    waiting = await create_action(journal_conn, state="awaiting_approval", steps=2)
    await log_in(client)
    html = await (await client.get(f"/actions/{waiting}")).text()
    cur = await journal_conn.execute("SELECT plan_hash FROM actions WHERE id = %s", (waiting,))
    (plan_hash,) = await cur.fetchone()  # type: ignore[misc]
    confirm = html[html.index('<details id="approve-confirm"') :]
    confirm = confirm[: confirm.index("</details>")]
    assert "<summary" in confirm
    assert f'Run the 2 steps of plan <code class="wrap">{plan_hash}</code> now?' in confirm
    assert 'id="approve"' in confirm
    assert html.count("data-post=") == 2  # the confirmed approve and cancel


def app_with(dsn: str, auth: dict[str, Any]) -> web.Application:
    """The healer's app on `dsn` with these `healer.auth` settings, recording only."""
    config = HealerConfig.model_validate({"healer": {"journal": {"dsn": dsn}, "auth": auth}})
    return create_app(config, dsn=dsn, run_executor=False)


def session_cookie(resp: Any) -> str:
    morsel = resp.cookies[SESSION_COOKIE]
    return str(morsel.value)


async def test_logout_ends_the_session_on_the_server_not_only_in_the_browser(
    client: Client,
) -> None:
    """A copy of the cookie (another tab, a stolen one) is worthless once its user logged out."""
    cookie = session_cookie(await log_in(client, username=USER, password=PASSWORD))
    html = await (await client.get("/")).text()
    resp = await client.post(
        "/logout", data={"csrf_token": csrf_of(html)}, headers=same_origin(client)
    )
    assert resp.status == 200  # followed to the login form
    client.session.cookie_jar.clear()
    copied = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    resp = await client.get("/", headers=copied, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/login")
    assert (await client.get("/api/actions/1/log", headers=copied)).status == 401


@pytest.mark.parametrize("session_secret", [None, "a-fixed-session-secret"])
async def test_changing_a_users_password_ends_their_sessions(
    journal_dsn: str,
    aiohttp_client: Callable[..., Awaitable[Client]],
    session_secret: str | None,
) -> None:
    """A healer restarted with a new password for a user (even with `session_secret` set)
    no longer accepts the sessions opened with the old one; other users' sessions live on."""
    alice_cfg: dict[str, Any] = {"name": "alice", "password": "old-password", "roles": ["approve"]}
    bob_cfg: dict[str, Any] = {"name": "bob", "password": "bobs-password"}
    old: dict[str, Any] = {"bearer_token": TOKEN, "users": [alice_cfg, bob_cfg]}
    if session_secret is not None:
        old["session_secret"] = session_secret
    first = await aiohttp_client(app_with(journal_dsn, old))
    alice = session_cookie(await log_in(first, username="alice", password="old-password"))
    bob = session_cookie(await log_in(first, username="bob", password="bobs-password"))
    new_alice = {**alice_cfg, "password": "new-password"}
    second = await aiohttp_client(app_with(journal_dsn, {**old, "users": [new_alice, bob_cfg]}))
    resp = await second.get("/", headers={"Cookie": f"{SESSION_COOKIE}={alice}"})
    assert resp.url.path == "/login"
    resp = await second.get("/", headers={"Cookie": f"{SESSION_COOKIE}={bob}"})
    assert resp.url.path == "/"
    # The same happens when a user loses a role.
    fewer = {**old, "users": [new_alice, {**bob_cfg, "roles": []}]}
    third = await aiohttp_client(app_with(journal_dsn, fewer))
    resp = await third.get("/", headers={"Cookie": f"{SESSION_COOKIE}={bob}"})
    assert resp.url.path == "/login"


async def test_behind_a_trusted_tls_proxy_the_session_cookie_keeps_secure(
    journal_dsn: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    """X-Forwarded-Proto is believed from `trusted_proxies` only: from anyone else it could
    not be told from a forgery, and the cookie follows the connection itself."""
    users = [{"name": USER, "password": PASSWORD}]
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    trusted = await aiohttp_client(
        app_with(journal_dsn, {"users": users, "trusted_proxies": ["127.0.0.0/8", "::1"]})
    )
    resp = await trusted.post(
        "/login",
        data={"username": USER, "password": PASSWORD},
        allow_redirects=False,
        headers={**same_origin(trusted), **forwarded},
    )
    assert resp.status == 303
    assert "Secure" in resp.headers["Set-Cookie"]
    resp = await trusted.post(
        "/login",
        data={"username": USER, "password": PASSWORD},
        allow_redirects=False,
        headers=same_origin(trusted),
    )
    assert "Secure" not in resp.headers["Set-Cookie"]  # plain HTTP through the proxy

    untrusted = await aiohttp_client(
        app_with(journal_dsn, {"users": users, "trusted_proxies": ["192.0.2.0/24"]})
    )
    resp = await untrusted.post(
        "/login",
        data={"username": USER, "password": PASSWORD},
        allow_redirects=False,
        headers={**same_origin(untrusted), **forwarded},
    )
    assert resp.status == 303
    assert "Secure" not in resp.headers["Set-Cookie"]


async def test_an_authorization_header_that_does_not_authenticate_gets_no_cookie_fallback(
    client: Client,
) -> None:
    """Skipping the CSRF check is for requests that prove themselves by their header; a
    header of another scheme, or a wrong one, does not let the cookie through unchecked."""
    await log_in(client)
    origin = same_origin(client)
    for header in ("Negotiate abc", "Foo", "Bearer wrong-token"):
        resp = await client.post("/api/test-post", headers={"Authorization": header, **origin})
        assert resp.status == 401, header
    # The page's own token still works with the cookie alone.
    token = csrf_of(await (await client.get("/")).text())
    resp = await client.post("/api/test-post", headers={CSRF_HEADER: token, **origin})
    assert resp.status == 200


async def test_the_login_form_asks_only_for_what_the_configured_credentials_need(
    journal_dsn: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    cases: list[tuple[dict[str, Any], bool, bool]] = [
        ({"bearer_token": TOKEN, "alertmanager_roles": ["post_alerts", "read"]}, True, False),
        ({"users": [{"name": USER, "password": PASSWORD}]}, False, True),
        ({**AUTH_CONFIG}, True, True),
    ]
    for auth, token_field, password_fields in cases:
        client = await aiohttp_client(app_with(journal_dsn, auth))
        html = await (await client.get("/login")).text()
        assert ('name="token"' in html) is token_field, auth
        assert ('name="username"' in html) is password_fields, auth
        assert ('name="password"' in html) is password_fields, auth
    # Alertmanager's token alone (it may only post alerts): no form, and what to do instead.
    client = await aiohttp_client(app_with(journal_dsn, {"bearer_token": TOKEN}))
    html = await (await client.get("/login")).text()
    assert "<form" not in html
    assert "healer.auth.users" in html
    resp = await log_in(client, token=TOKEN)
    assert resp.status == 403
    assert "Set-Cookie" not in resp.headers


async def test_an_approval_from_the_console_names_the_user_who_logged_in(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Approving needs the approve role: a session opened with Alertmanager's token may read
    but not approve, and a user's approval records their name, as does a cancel."""
    aid = await create_action(journal_conn, state="awaiting_approval")
    other = await create_action(journal_conn, state="awaiting_approval")
    cur = await journal_conn.execute("SELECT plan_hash FROM actions WHERE id = %s", (aid,))
    (plan_hash,) = await cur.fetchone()  # type: ignore[misc]

    await log_in(client, token=TOKEN)
    html = await (await client.get(f"/actions/{aid}")).text()
    assert 'id="approve"' not in html  # no button for what the role does not allow
    assert 'id="cancel"' not in html
    csrf = {CSRF_HEADER: csrf_of(html)}
    resp = await client.post(
        f"/api/actions/{aid}/approve",
        json={"plan_hash": plan_hash},
        headers={**csrf, **same_origin(client)},
    )
    assert resp.status == 403
    assert "approve role" in (await resp.json())["error"]

    client.session.cookie_jar.clear()
    await log_in(client, username=USER, password=PASSWORD)
    csrf = {CSRF_HEADER: csrf_of(await (await client.get(f"/actions/{aid}")).text())}
    resp = await client.post(
        f"/api/actions/{aid}/approve",
        json={"plan_hash": plan_hash},
        headers={**csrf, **same_origin(client)},
    )
    assert resp.status == 200
    resp = await client.post(
        f"/api/actions/{other}/cancel", headers={**csrf, **same_origin(client)}
    )
    assert resp.status == 200
    html = await (await client.get(f"/actions/{other}")).text()
    assert f"by {USER}" in html  # the page says who cancelled
    cur = await journal_conn.execute(
        "SELECT id, approved_by, cancelled_by FROM actions WHERE id IN (%s, %s) ORDER BY id",
        (aid, other),
    )
    assert await cur.fetchall() == [(aid, USER, None), (other, None, USER)]


async def test_a_session_ends_when_its_time_is_up(
    journal_dsn: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    auth = {"users": [{"name": USER, "password": PASSWORD}], "session_ttl": 0}
    client = await aiohttp_client(app_with(journal_dsn, auth))
    resp = await log_in(client, username=USER, password=PASSWORD)
    assert resp.status == 303
    assert session_cookie(resp)
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/login")


async def test_a_step_on_other_hosts_shows_a_row_per_host_and_the_list_counts_them(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Each host run is a row (host, state, exit code, time, agent, error) under its step;
    the list shows ✓succeeded ✗failed for actions with host runs only."""
    aid = await create_action(journal_conn, steps=2)
    await add_host_run(journal_conn, aid, "web1", step=1, exit_code=0, seconds=2.5, agent="ag-a")
    await add_host_run(
        journal_conn, aid, "web2", step=1, state="timed_out", error="no agent started it"
    )
    await add_host_run(journal_conn, aid, "<b>web3</b>", step=1, state="pending", batch=1)
    plain = await create_action(journal_conn)
    await log_in(client)

    html = await (await client.get(f"/actions/{aid}", params={"fragment": "detail"})).text()
    assert 'id="hosts-0"' not in html  # the local step has no host table
    table = html[html.index('id="hosts-1"') :]
    table = table[: table.index("</table>")]
    web1 = re.search(
        r'<tr class="host-run state-succeeded" data-host="web1">(.*?)</tr>', table, re.S
    )
    assert web1 is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", web1.group(1), re.S)
    assert "web1" in cells[0]
    assert 'class="badge succeeded"' in cells[1]
    assert cells[2:] == ["0", "2.5 s", "ag-a"]
    assert "timed out" in table
    assert "web2: no agent started it" in table
    assert "&lt;b&gt;web3&lt;/b&gt;" in table  # a host name is text, never markup
    assert "<b>web3" not in table

    rows = await (await client.get("/", params={"fragment": "rows"})).text()
    row = rows[rows.index(f'href="/actions/{aid}"') :]
    row = row[: row.index("</tr>")]
    assert "✓1" in row
    assert "✗1" in row
    other = rows[rows.index(f'href="/actions/{plain}"') :]
    assert "✓" not in other[: other.index("</tr>")]


async def test_a_paused_action_offers_resume_to_approvers_only(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Paused between batches: an approver sees Resume, which posts (with the page's CSRF
    token) to the resume endpoint; a reader sees the pause but no button."""
    aid = await create_action(journal_conn, steps=1)
    await add_host_run(journal_conn, aid, "web1", exit_code=0)
    await add_host_run(journal_conn, aid, "web2", state="pending", batch=1)
    running = await create_action(journal_conn)

    await log_in(client, token=TOKEN)
    html = await (await client.get(f"/actions/{aid}")).text()
    assert 'id="resume"' not in html
    await set_paused(journal_conn, aid)
    html = await (await client.get(f"/actions/{aid}")).text()
    assert 'id="paused"' in html
    assert 'id="resume"' not in html

    client.session.cookie_jar.clear()
    await log_in(client)
    assert 'id="resume"' not in await (await client.get(f"/actions/{running}")).text()
    html = await (await client.get(f"/actions/{aid}")).text()
    assert f'data-post="/api/actions/{aid}/resume"' in html
    resp = await client.post(
        f"/api/actions/{aid}/resume", headers={CSRF_HEADER: csrf_of(html), **same_origin(client)}
    )
    assert resp.status == 200, await resp.text()
    html = await (await client.get(f"/actions/{aid}", params={"fragment": "detail"})).text()
    assert 'id="resume"' not in html
    assert f"resumed by {USER}" in html
