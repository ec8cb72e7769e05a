"""The actions API: listing with filters and pages, details, approval bound to the plan, cancel."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from healer.app import create_app
from tests.support.ingest_helpers import (
    APPROVER,
    APPROVER_AUTH,
    AUTH,
    config_for,
    payload,
    rows,
    with_alert,
)

Client = TestClient[Any, Any]

RULES = """\
rules:
  - name: refresh-tree-status
    match: {alertname: TaskmedicStaleRows}
    approval: true
    params:
      check: {label: check, pattern: '[a-z_]+'}
    steps:
      - name: rebuild
        script: {argv: [/bin/echo, "{{ params.check }}"]}
        undo: {script: {argv: [/bin/echo, undo]}}
      - name: mark
        sql: {database: app, query: "UPDATE t SET ok = true WHERE name = %(name)s",
              params: {name: "{{ params.check }}"}}
  - name: plain
    match: {alertname: TaskmedicCeleryWorkerDown}
    steps:
      - name: s
        script: {argv: [/bin/true]}
"""


@pytest.fixture
async def client(aiohttp_client: Any, journal_dsn: str, tmp_path: Path) -> Client:
    config = config_for(
        tmp_path,
        journal_dsn,
        rules=RULES,
        top={"databases": {"app": {"dsn": "postgresql://u@127.0.0.1/app"}}},
    )
    c: Client = await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))
    return c


async def _post(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/alerts", json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    out: dict[str, Any] = await resp.json()
    return out


async def _awaiting(client: Client) -> dict[str, Any]:
    body = await _post(client, payload("firing_stale_rows"))
    action_id = body["actions"][0]["id"]
    resp = await client.get(f"/api/actions/{action_id}", headers=AUTH)
    assert resp.status == 200
    got: dict[str, Any] = await resp.json()
    return got


async def test_show_gives_alert_rendered_plan_steps_and_events(client: Client) -> None:
    a = await _awaiting(client)
    assert a["state"] == "awaiting_approval"
    assert a["alert"]["labels"]["check"] == "tree_status_cache"
    assert a["alert"]["annotations"]["summary"].startswith("12 rows")
    steps = a["plan"]["steps"]
    assert steps[0]["script"]["argv"] == ["/bin/echo", "tree_status_cache"]
    assert steps[0]["undo"]["script"]["argv"] == ["/bin/echo", "undo"]
    assert steps[1]["sql"]["params"] == {"name": "tree_status_cache"}
    assert [s["state"] for s in a["steps"]] == ["pending", "pending"]
    assert [e["kind"] for e in a["events"]] == ["created"]
    assert a["approval_expires_at"] is not None


async def test_approve_with_the_wrong_hash_is_409_and_changes_nothing(
    client: Client, journal_dsn: str
) -> None:
    a = await _awaiting(client)
    resp = await client.post(
        f"/api/actions/{a['id']}/approve", json={"plan_hash": "0" * 64}, headers=APPROVER_AUTH
    )
    assert resp.status == 409
    assert "plan_hash" in (await resp.json())["error"]
    assert rows(journal_dsn, "SELECT state, approved_by FROM actions") == [
        ("awaiting_approval", None)
    ]


async def test_approve_with_the_plan_hash_makes_it_pending_and_records_who(
    client: Client, journal_dsn: str
) -> None:
    a = await _awaiting(client)
    resp = await client.post(
        f"/api/actions/{a['id']}/approve", json={"plan_hash": a["plan_hash"]}, headers=APPROVER_AUTH
    )
    assert resp.status == 200
    assert rows(journal_dsn, "SELECT state, approved_by FROM actions") == [("pending", APPROVER)]
    assert rows(journal_dsn, "SELECT kind, from_state, to_state FROM events ORDER BY id")[-1] == (
        "approved",
        "awaiting_approval",
        "pending",
    )
    again = await client.post(
        f"/api/actions/{a['id']}/approve", json={"plan_hash": a["plan_hash"]}, headers=APPROVER_AUTH
    )
    assert again.status == 409  # already approved


async def test_approve_needs_a_plan_hash(client: Client) -> None:
    a = await _awaiting(client)
    bodies: list[dict[str, Any] | list[Any]] = [{}, {"plan_hash": 5}, []]
    for body in bodies:
        resp = await client.post(
            f"/api/actions/{a['id']}/approve", json=body, headers=APPROVER_AUTH
        )
        assert resp.status == 400
    resp = await client.post(f"/api/actions/{a['id']}/approve", data=b"{", headers=APPROVER_AUTH)
    assert resp.status == 400


async def test_an_expired_approval_cannot_be_approved(client: Client, journal_dsn: str) -> None:
    a = await _awaiting(client)
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE actions SET approval_expires_at = now() - interval '1 second'")
    resp = await client.post(
        f"/api/actions/{a['id']}/approve", json={"plan_hash": a["plan_hash"]}, headers=APPROVER_AUTH
    )
    assert resp.status == 409
    assert "expired" in (await resp.json())["error"]


async def test_cancel_a_waiting_action_then_cancel_again_is_409(
    client: Client, journal_dsn: str
) -> None:
    a = await _awaiting(client)
    resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=APPROVER_AUTH)
    assert resp.status == 200
    assert (await resp.json())["state"] == "cancelled"
    assert rows(journal_dsn, "SELECT state, reason FROM actions") == [
        ("cancelled", f"cancelled by {APPROVER}")
    ]
    assert rows(journal_dsn, "SELECT DISTINCT state FROM steps") == [("cancelled",)]
    resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=APPROVER_AUTH)
    assert resp.status == 409


async def test_alertmanagers_token_may_post_and_read_but_never_approve_or_cancel(
    client: Client, journal_dsn: str
) -> None:
    """Alertmanager's credential cannot approve the actions its own alerts created: 403 with
    a JSON error naming the missing role, and the action stays as it was."""
    a = await _awaiting(client)
    for verb, body in (("approve", {"plan_hash": a["plan_hash"]}), ("cancel", None)):
        resp = await client.post(f"/api/actions/{a['id']}/{verb}", json=body, headers=AUTH)
        assert resp.status == 403
        assert "approve role" in (await resp.json())["error"]
    assert rows(journal_dsn, "SELECT state, approved_by, cancelled_by FROM actions") == [
        ("awaiting_approval", None, None)
    ]
    assert [e[0] for e in rows(journal_dsn, "SELECT kind FROM events")] == ["created"]


async def test_a_user_without_the_approve_role_may_read_but_not_approve(
    aiohttp_client: Any, journal_dsn: str, tmp_path: Path
) -> None:
    """Roles are per user: a reader sees actions, an approver approves, and the token of a
    default config (post_alerts only) may not even read."""
    auth = {
        "bearer_token": "am-token",
        "users": [
            {"name": "rita", "password": "reads-only", "roles": ["read"]},
            {"name": "alice", "password": "approves", "roles": ["approve"]},
        ],
    }
    config = config_for(
        tmp_path,
        journal_dsn,
        rules=RULES,
        healer={"auth": auth},
        top={"databases": {"app": {"dsn": "postgresql://u@127.0.0.1/app"}}},
    )
    client = await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))
    token = {"Authorization": "Bearer am-token"}

    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    resp = await client.post("/alerts", json=payload("firing_stale_rows"), headers=token)
    assert resp.status == 200
    action_id = (await resp.json())["actions"][0]["id"]
    resp = await client.get(f"/api/actions/{action_id}", headers=token)
    assert resp.status == 403
    assert "read role" in (await resp.json())["error"]
    resp = await client.post(
        "/alerts", json=payload("firing_stale_rows"), headers=basic("rita", "reads-only")
    )
    assert resp.status == 403
    resp = await client.get(f"/api/actions/{action_id}", headers=basic("rita", "reads-only"))
    assert resp.status == 200
    plan_hash = (await resp.json())["plan_hash"]
    resp = await client.post(
        f"/api/actions/{action_id}/approve",
        json={"plan_hash": plan_hash},
        headers=basic("rita", "reads-only"),
    )
    assert resp.status == 403
    resp = await client.post(
        f"/api/actions/{action_id}/approve",
        json={"plan_hash": plan_hash},
        headers=basic("alice", "approves"),
    )
    assert resp.status == 200
    assert (await resp.json())["approved_by"] == "alice"
    resp = await client.get(f"/api/actions/{action_id}", headers=basic("alice", "approves"))
    assert (await resp.json())["approved_by"] == "alice"
    resp = await client.get(f"/api/actions/{action_id}", headers=basic("alice", "wrong"))
    assert resp.status == 401


async def test_cancel_records_who_cancelled(client: Client, journal_dsn: str) -> None:
    a = await _awaiting(client)
    resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=APPROVER_AUTH)
    assert resp.status == 200
    assert (await resp.json())["cancelled_by"] == APPROVER
    shown = await (await client.get(f"/api/actions/{a['id']}", headers=AUTH)).json()
    assert shown["cancelled_by"] == APPROVER
    assert shown["cancelled_at"] is not None
    assert rows(journal_dsn, "SELECT actor FROM events ORDER BY id")[-1] == (APPROVER,)


async def test_cancel_a_running_action_asks_the_executor_to_stop_it(
    client: Client, journal_dsn: str
) -> None:
    a = await _awaiting(client)
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE actions SET state = 'running', started_at = now()")
        conn.execute("LISTEN taskmedic_state")
        conn.execute("LISTEN taskmedic_cancel")
        resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=APPROVER_AUTH)
        assert resp.status == 202
        notified = {(n.channel, n.payload) for n in conn.notifies(timeout=2, stop_after=2)}
    # Followers of the log learn of the state change; the executors, that it should stop.
    assert notified == {("taskmedic_state", str(a["id"])), ("taskmedic_cancel", str(a["id"]))}
    [(state, requested)] = rows(journal_dsn, "SELECT state, cancel_requested_at FROM actions")
    assert state == "running"
    assert requested is not None
    assert rows(journal_dsn, "SELECT kind FROM events ORDER BY id")[-1] == ("cancel_requested",)
    assert rows(journal_dsn, "SELECT cancelled_by FROM actions") == [(APPROVER,)]


async def test_unknown_action_is_404(client: Client) -> None:
    # `²` and `٣` are digits to str.isdigit but not to int(): still a plain 404, never a 500.
    for path in ("/api/actions/999999", "/api/actions/abc", "/api/actions/%C2%B2"):
        assert (await client.get(path, headers=AUTH)).status == 404
    for path in ("/api/actions/%D9%A3", "/api/actions/%C2%B2/log"):
        assert (await client.get(path, headers=AUTH)).status == 404
    assert (await client.get("/api/actions?limit=%C2%B2", headers=AUTH)).status == 400
    assert (await client.get("/api/actions?cursor=%C2%B2", headers=AUTH)).status == 400
    resp = await client.post("/api/actions/%C2%B2/cancel", headers=APPROVER_AUTH)
    assert resp.status == 404
    resp = await client.post("/api/actions/999999/cancel", headers=APPROVER_AUTH)
    assert resp.status == 404


async def test_list_filters_by_state_and_rule_and_pages_with_a_cursor(client: Client) -> None:
    await _post(client, payload("firing_stale_rows"))  # awaiting_approval
    await _post(client, payload("grouped_workers_down"))  # 3 pending (rule plain)
    resp = await client.get("/api/actions?limit=2", headers=AUTH)
    page1 = await resp.json()
    assert len(page1["items"]) == 2
    assert page1["next"]
    page2 = await (
        await client.get(f"/api/actions?limit=2&cursor={page1['next']}", headers=AUTH)
    ).json()
    assert len(page2["items"]) == 2
    assert page2["next"] is None
    ids = [i["id"] for i in page1["items"] + page2["items"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 4
    item = page1["items"][0]
    assert {"id", "rule", "state", "alert", "created_at"} <= set(item)

    got = await (await client.get("/api/actions?state=pending", headers=AUTH)).json()
    assert {i["rule"] for i in got["items"]} == {"plain"}
    assert len(got["items"]) == 3
    got = await (await client.get("/api/actions?rule=refresh-tree-status", headers=AUTH)).json()
    assert [i["state"] for i in got["items"]] == ["awaiting_approval"]
    got = await (
        await client.get("/api/actions?state=pending,awaiting_approval&since=1h", headers=AUTH)
    ).json()
    assert len(got["items"]) == 4
    got = await (await client.get("/api/actions?since=2999-01-01T00:00:00Z", headers=AUTH)).json()
    assert got["items"] == []


@pytest.mark.parametrize(
    "query",
    [
        "state=bogus",
        "limit=0",
        "limit=x",
        "since=soon",
        "cursor=abc",
        "since=2024-01-01",
        "rule=a%00b",
    ],
)
async def test_bad_list_parameters_are_400(client: Client, query: str) -> None:
    assert (await client.get(f"/api/actions?{query}", headers=AUTH)).status == 400


async def test_metrics_count_actions_by_state_from_the_journal(client: Client) -> None:
    await _post(client, payload("firing_stale_rows"))
    await _post(client, with_alert(payload("grouped_workers_down")))
    text = await (await client.get("/metrics")).text()
    assert 'taskmedic_actions{state="awaiting_approval"} 1.0' in text
    assert 'taskmedic_actions{state="pending"} 3.0' in text
    assert 'taskmedic_actions{state="running"} 0.0' in text
    assert "taskmedic_journal_up 1.0" in text
    assert 'taskmedic_alerts_received_total{status="firing"} 4.0' in text
