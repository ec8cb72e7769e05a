"""The journal function that records a notification (migration 0002) writes exactly what the
healer promises: every action tied to its own alert, decided one after another, and the same
rows an ingest of one statement per row used to write. The decision itself: test_decision.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from healer.app import create_app
from healer.plan import Plan
from tests.support.ingest_helpers import AUTH, config_for, payload, rows, with_alert

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: Any, journal_dsn: str, tmp_path: Path) -> MakeClient:
    """A test client of a healer on the test's journal; the executor does not run."""

    async def make(**kw: Any) -> Client:
        app = create_app(
            config_for(tmp_path, journal_dsn, **kw), dsn=journal_dsn, run_executor=False
        )
        client: Client = await aiohttp_client(app)
        return client

    return make


async def post(client: Client, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/alerts", json=body, headers=AUTH)
    return resp.status, await resp.json()


async def test_each_action_of_a_grouped_notification_points_at_its_own_alert(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Three alerts in one notification: each action, and its `created` event, names the
    alert row of the same fingerprint, and the stored plan hashes to the recorded plan_hash."""
    client = await make_client()
    status, body = await post(client, payload("grouped_workers_down"))
    assert status == 200
    assert len(body["actions"]) == 3
    recorded = rows(
        journal_dsn,
        "SELECT a.fingerprint, al.fingerprint, al.notification_id, a.plan, a.plan_hash, "
        "       e.data->>'alert_id', a.alert_id::text, e.data->>'plan_hash' "
        "FROM actions a JOIN alerts al ON al.id = a.alert_id "
        "JOIN events e ON e.action_id = a.id AND e.kind = 'created'",
    )
    assert len(recorded) == 3
    for fp, alert_fp, notification_id, plan, plan_hash, ev_alert, alert_id, ev_hash in recorded:
        assert fp == alert_fp
        assert notification_id == body["notification_id"]
        assert ev_alert == alert_id
        assert plan_hash == ev_hash == Plan.model_validate(plan).hash()
    assert rows(journal_dsn, "SELECT count(*) FROM alerts") == [(3,)]


TARGETED = """\
rules:
  - name: per-check
    match: {alertname: TaskmedicCeleryWorkerDown}
    target: [cluster]
    cooldown: 10m
    steps:
      - name: s
        script: {argv: [/bin/true]}
"""


async def test_alerts_of_one_notification_decide_one_after_another(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Three workers down on one cluster, one rule counted per cluster: the first alert starts
    the action, the next two see it and are skipped by the cooldown, in the same request."""
    client = await make_client(rules=TARGETED)
    status, body = await post(client, payload("grouped_workers_down"))
    assert status == 200
    assert [a["state"] for a in body["actions"]] == ["pending", "skipped", "skipped"]
    assert body["actions"][1]["reason"].startswith("cooldown")
    assert rows(journal_dsn, "SELECT state, count(*) FROM steps GROUP BY state ORDER BY state") == [
        ("pending", 1),
        ("skipped", 2),
    ]


async def test_rows_of_a_firing_alert_are_those_of_the_statement_per_row_ingest(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Every column the ingest writes, for a pending action and for its resolved alert."""
    client = await make_client()
    status, body = await post(client, payload("firing_stale_rows"))
    assert status == 200
    [(receiver, n_status, group_key, truncated, stored)] = rows(
        journal_dsn,
        "SELECT receiver, status, group_key, truncated_alerts, payload FROM notifications",
    )
    assert (receiver, n_status, truncated) == ("taskmedic", "firing", 0)
    assert group_key == payload("firing_stale_rows")["groupKey"]
    assert stored == payload("firing_stale_rows")
    alert = payload("firing_stale_rows")["alerts"][0]
    [(a_status, fp, ends_at, labels, annotations, url)] = rows(
        journal_dsn,
        "SELECT status, fingerprint, ends_at, labels, annotations, generator_url FROM alerts",
    )
    assert (a_status, fp, ends_at) == ("firing", alert["fingerprint"], None)
    assert (labels, annotations, url) == (
        alert["labels"],
        alert["annotations"],
        alert["generatorURL"],
    )
    [action] = rows(
        journal_dsn,
        "SELECT rule, trigger, labels, target, state, reason, dry_run, on_interrupt, "
        "approval_expires_at, finished_at, attempt FROM actions",
    )
    target = (
        '{"alertname":"TaskmedicStaleRows","check":"tree_status_cache",'
        '"instance":"exporter-1:9808","job":"taskmedic","severity":"warning"}'
    )
    assert action == (
        "refresh-tree-status",
        "firing",
        alert["labels"],
        target,
        "pending",
        "",
        False,
        "fail",
        None,
        None,
        0,
    )
    [event] = rows(
        journal_dsn, "SELECT actor, kind, from_state, to_state, message, data FROM events"
    )
    assert event[:5] == ("ingest", "created", None, "pending", "")
    assert set(event[5]) == {"alert_id", "plan_hash", "dry_run", "rule_source"}
    assert event[5]["rule_source"].endswith("healer.yaml:2")

    resolved = with_alert(payload("firing_stale_rows"), status="resolved")
    resolved["status"] = "resolved"
    status, body2 = await post(client, resolved)
    assert status == 200
    assert body2["cancelled"] == [body["actions"][0]["id"]]
    assert rows(journal_dsn, "SELECT actor, kind, data FROM events ORDER BY id")[1] == (
        "ingest",
        "cancelled",
        {},
    )
