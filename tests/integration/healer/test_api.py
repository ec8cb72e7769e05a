"""The actions API: listing with filters and pages, details, approval bound to the plan, cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from healer.app import create_app
from tests.support.ingest_helpers import AUTH, config_for, payload, rows, with_alert

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
        f"/api/actions/{a['id']}/approve", json={"plan_hash": "0" * 64}, headers=AUTH
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
        f"/api/actions/{a['id']}/approve", json={"plan_hash": a["plan_hash"]}, headers=AUTH
    )
    assert resp.status == 200
    assert rows(journal_dsn, "SELECT state, approved_by FROM actions") == [("pending", "token")]
    assert rows(journal_dsn, "SELECT kind, from_state, to_state FROM events ORDER BY id")[-1] == (
        "approved",
        "awaiting_approval",
        "pending",
    )
    again = await client.post(
        f"/api/actions/{a['id']}/approve", json={"plan_hash": a["plan_hash"]}, headers=AUTH
    )
    assert again.status == 409  # already approved


async def test_approve_needs_a_plan_hash(client: Client) -> None:
    a = await _awaiting(client)
    bodies: list[dict[str, Any] | list[Any]] = [{}, {"plan_hash": 5}, []]
    for body in bodies:
        resp = await client.post(f"/api/actions/{a['id']}/approve", json=body, headers=AUTH)
        assert resp.status == 400
    resp = await client.post(f"/api/actions/{a['id']}/approve", data=b"{", headers=AUTH)
    assert resp.status == 400


async def test_an_expired_approval_cannot_be_approved(client: Client, journal_dsn: str) -> None:
    a = await _awaiting(client)
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE actions SET approval_expires_at = now() - interval '1 second'")
    resp = await client.post(
        f"/api/actions/{a['id']}/approve", json={"plan_hash": a["plan_hash"]}, headers=AUTH
    )
    assert resp.status == 409
    assert "expired" in (await resp.json())["error"]


async def test_cancel_a_waiting_action_then_cancel_again_is_409(
    client: Client, journal_dsn: str
) -> None:
    a = await _awaiting(client)
    resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["state"] == "cancelled"
    assert rows(journal_dsn, "SELECT state, reason FROM actions") == [
        ("cancelled", "cancelled by token")
    ]
    assert rows(journal_dsn, "SELECT DISTINCT state FROM steps") == [("cancelled",)]
    resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=AUTH)
    assert resp.status == 409


async def test_cancel_a_running_action_asks_the_executor_to_stop_it(
    client: Client, journal_dsn: str
) -> None:
    a = await _awaiting(client)
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE actions SET state = 'running', started_at = now()")
        conn.execute("LISTEN taskmedic_state")
        conn.execute("LISTEN taskmedic_cancel")
        resp = await client.post(f"/api/actions/{a['id']}/cancel", headers=AUTH)
        assert resp.status == 202
        notified = {(n.channel, n.payload) for n in conn.notifies(timeout=2, stop_after=2)}
    # Followers of the log learn of the state change; the executors, that it should stop.
    assert notified == {("taskmedic_state", str(a["id"])), ("taskmedic_cancel", str(a["id"]))}
    [(state, requested)] = rows(journal_dsn, "SELECT state, cancel_requested_at FROM actions")
    assert state == "running"
    assert requested is not None
    assert rows(journal_dsn, "SELECT kind FROM events ORDER BY id")[-1] == ("cancel_requested",)


async def test_unknown_action_is_404(client: Client) -> None:
    for path in ("/api/actions/999999", "/api/actions/abc"):
        assert (await client.get(path, headers=AUTH)).status == 404
    resp = await client.post("/api/actions/999999/cancel", headers=AUTH)
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
