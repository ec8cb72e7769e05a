"""POST /alerts records Alertmanager notifications and their actions in one journal transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from healer.app import create_app
from healer.metrics import HealerMetrics
from tests.services import wait_for
from tests.support.ingest_helpers import (
    AUTH,
    PAYLOADS,
    config_for,
    journal_counts,
    payload,
    rows,
    with_alert,
)

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(
    aiohttp_client: Any, journal_dsn: str, tmp_path: Path
) -> Callable[..., Awaitable[Client]]:
    """A test client of a healer on the test's journal; the executor does not run."""

    async def make(metrics: HealerMetrics | None = None, **kw: Any) -> Client:
        config = config_for(tmp_path, journal_dsn, **kw)
        app = create_app(config, dsn=journal_dsn, run_executor=False, metrics=metrics)
        client: Client = await aiohttp_client(app)
        return client

    return make


async def post(client: Client, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/alerts", json=body, headers=AUTH)
    return resp.status, await resp.json()


async def test_firing_alert_records_notification_alert_and_one_pending_action(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """A real firing payload: the notification, the alert, a pending action with its plan."""
    client = await make_client()
    status, body = await post(client, payload("firing_stale_rows"))
    assert status == 200, body
    assert [a["rule"] for a in body["actions"]] == ["refresh-tree-status"]
    assert body["actions"][0]["state"] == "pending"
    [(ends_at, starts_at)] = rows(journal_dsn, "SELECT ends_at, starts_at FROM alerts")
    assert ends_at is None  # Go's zero time means "still firing"
    assert starts_at.isoformat() == "2024-05-14T09:21:47.318729+00:00"
    [(state, plan, events)] = rows(
        journal_dsn,
        "SELECT a.state, a.plan, (SELECT count(*) FROM events e WHERE e.action_id = a.id) "
        "FROM actions a",
    )
    assert state == "pending"
    assert plan["steps"][0]["script"]["argv"] == ["/bin/echo", "rebuilt"]
    assert events == 1
    assert rows(journal_dsn, "SELECT idx, name, kind, state FROM steps") == [
        (0, "rebuild cache", "script", "pending")
    ]


async def test_grouped_notification_starts_one_action_per_alert(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Three workers down in one grouped notification: three alerts, three actions."""
    client = await make_client()
    status, body = await post(client, payload("grouped_workers_down"))
    assert status == 200
    assert body["alerts"] == 3
    argvs = sorted(
        r[0]["steps"][0]["script"]["argv"][2]
        for r in rows(journal_dsn, "SELECT plan FROM actions WHERE rule = 'restart-worker'")
    )
    assert argvs == ["beat@app-host-2", "celery@app-host-2", "timelines@app-host-2"]


async def test_repeat_of_the_same_firing_never_starts_a_second_action(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Alertmanager retries and the HA peer's copy are recorded but start nothing new."""
    client = await make_client()
    for _ in range(3):
        status, _ = await post(client, payload("firing_stale_rows"))
        assert status == 200
    assert journal_counts(journal_dsn)["notifications"] == 3
    assert journal_counts(journal_dsn)["actions"] == 1


async def test_twenty_concurrent_identical_posts_give_exactly_one_action(
    make_client: MakeClient, journal_dsn: str
) -> None:
    client = await make_client()
    results = await asyncio.gather(*(post(client, payload("firing_stale_rows")) for _ in range(20)))
    assert {s for s, _ in results} == {200}
    assert sum(len(b["actions"]) for _, b in results) == 1
    assert sum(len(b["duplicates"]) for _, b in results) == 19
    assert journal_counts(journal_dsn)["actions"] == 1
    assert journal_counts(journal_dsn)["steps"] == 1


async def test_resolved_cancels_actions_that_have_not_started(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """A resolved notification cancels the pending action of that firing, with an event."""
    client = await make_client()
    await post(client, payload("firing_stale_rows"))
    status, body = await post(client, payload("resolved_stale_rows"))
    assert status == 200
    [(action_id, state, reason)] = rows(
        journal_dsn, "SELECT id, state, reason FROM actions WHERE trigger = 'firing'"
    )
    assert state == "cancelled"
    assert "resolved" in reason
    assert body["cancelled"] == [action_id]
    assert rows(
        journal_dsn,
        "SELECT kind, from_state, to_state FROM events WHERE action_id = %s ORDER BY id",
        (action_id,),
    ) == [("created", None, "pending"), ("cancelled", "pending", "cancelled")]
    assert rows(journal_dsn, "SELECT state FROM steps WHERE action_id = %s", (action_id,)) == [
        ("cancelled",)
    ]


async def test_resolved_starts_nothing_unless_a_rule_says_on_resolved(
    make_client: MakeClient, journal_dsn: str
) -> None:
    client = await make_client()
    status, body = await post(client, payload("resolved_stale_rows"))
    assert status == 200
    # refresh-tree-status (on: firing) starts nothing; note-recovery (on: resolved) does.
    assert [(a["rule"], a["state"]) for a in body["actions"]] == [("note-recovery", "pending")]
    assert rows(journal_dsn, "SELECT rule, trigger FROM actions") == [("note-recovery", "resolved")]
    assert journal_counts(journal_dsn)["alerts"] == 1


async def test_resolved_does_not_touch_a_running_action(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Only actions that have not started are cancelled; a running one is left to finish."""
    client = await make_client()
    await post(client, payload("firing_stale_rows"))
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("UPDATE actions SET state = 'running', started_at = now()")
    await post(client, payload("resolved_stale_rows"))
    assert rows(journal_dsn, "SELECT state FROM actions WHERE trigger = 'firing'") == [("running",)]


async def test_truncated_alerts_are_recorded_and_counted(
    make_client: MakeClient, journal_dsn: str
) -> None:
    metrics = HealerMetrics()
    client = await make_client(metrics=metrics)
    status, body = await post(client, payload("truncated_workers_down"))
    assert status == 200
    assert body["alerts"] == 2
    assert rows(journal_dsn, "SELECT truncated_alerts FROM notifications") == [(3,)]
    assert metrics.registry.get_sample_value("taskmedic_alerts_truncated_total") == 3
    assert (
        metrics.registry.get_sample_value("taskmedic_alerts_received_total", {"status": "firing"})
        == 2
    )


async def test_cooldown_skips_a_new_firing_of_the_same_target(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """A new firing (new startsAt) of the same rule+labels inside cooldown is skipped."""
    client = await make_client()
    first = payload("firing_stale_rows")
    await post(client, first)
    again = with_alert(first, startsAt="2024-05-14T09:40:00Z")
    status, body = await post(client, again)
    assert status == 200
    [action] = body["actions"]
    assert action["state"] == "skipped"
    assert action["reason"].startswith("cooldown")
    other = with_alert(first, startsAt="2024-05-14T09:41:00Z", labels={"check": "other"})
    other["alerts"][0]["fingerprint"] = "0000000000000001"
    _, body = await post(client, other)
    assert body["actions"] == []  # other check: the rule does not match at all
    assert rows(journal_dsn, "SELECT state FROM actions ORDER BY id") == [
        ("pending",),
        ("skipped",),
    ]


LIMITED = """\
rules:
  - name: limited
    match: {alertname: TaskmedicOrphanTasks}
    target: [check]
    limit: {count: 2, per: 1h}
    steps:
      - name: s
        script: {argv: [/bin/true]}
"""


async def test_circuit_breaker_skips_past_the_limit_and_opens_the_gauge(
    make_client: MakeClient, journal_dsn: str
) -> None:
    metrics = HealerMetrics()
    client = await make_client(metrics=metrics, rules=LIMITED)
    base = with_alert(payload("firing_stale_rows"), labels={"alertname": "TaskmedicOrphanTasks"})
    states = []
    for i in range(4):
        p = with_alert(base, startsAt=f"2024-05-14T10:0{i}:00Z", fingerprint=f"f{i:015d}")
        _, body = await post(client, p)
        states.append(body["actions"][0]["state"])
    assert states == ["pending", "pending", "skipped", "skipped"]
    [reason] = rows(journal_dsn, "SELECT DISTINCT reason FROM actions WHERE state = 'skipped'")
    assert "circuit open" in reason[0]
    assert (
        metrics.registry.get_sample_value("taskmedic_rule_circuit_open", {"rule": "limited"}) == 1
    )
    resp = await client.get("/metrics")
    text = await resp.text()
    assert 'taskmedic_rule_circuit_open{rule="limited"} 1.0' in text
    assert 'taskmedic_actions{state="skipped"} 2.0' in text


APPROVAL = """\
rules:
  - name: needs-approval
    match: {alertname: TaskmedicStaleRows}
    approval: true
    dry_run: true
    steps:
      - name: s
        script: {argv: [/bin/true]}
"""


async def test_approval_rule_waits_with_an_expiry(
    make_client: MakeClient, journal_dsn: str
) -> None:
    client = await make_client(rules=APPROVAL, healer={"approval_timeout": "15m"})
    _, body = await post(client, payload("firing_stale_rows"))
    assert body["actions"][0]["state"] == "awaiting_approval"
    [(dry_run, seconds)] = rows(
        journal_dsn,
        "SELECT dry_run, extract(epoch FROM approval_expires_at - created_at) FROM actions",
    )
    assert dry_run is True
    assert float(seconds) == pytest.approx(900, abs=1)


async def test_healer_wide_dry_run_marks_every_plan(
    make_client: MakeClient, journal_dsn: str
) -> None:
    client = await make_client(healer={"dry_run": True})
    await post(client, payload("firing_stale_rows"))
    [(dry_run, plan_dry)] = rows(
        journal_dsn, "SELECT dry_run, (plan->>'dry_run')::bool FROM actions"
    )
    assert dry_run is True
    assert plan_dry is True


async def test_label_that_fails_its_pattern_fails_the_action_with_nothing_to_run(
    make_client: MakeClient, journal_dsn: str, tmp_path: Path
) -> None:
    """Injection attempts through labels: recorded as failed, no steps, the reason says why."""
    client = await make_client()
    text = (PAYLOADS / "injection_workers_down.json").read_text()
    body_json = __import__("json").loads(text.replace("@MARKDIR@", str(tmp_path)))
    status, body = await post(client, body_json)
    assert status == 200
    assert [a["state"] for a in body["actions"]] == ["failed"] * 3
    for a in body["actions"]:
        assert "does not match pattern" in a["reason"]
        assert "nothing was run" in a["reason"]
    assert journal_counts(journal_dsn)["steps"] == 0
    assert rows(journal_dsn, "SELECT DISTINCT jsonb_array_length(plan->'steps') FROM actions") == [
        (0,)
    ]
    assert not list(tmp_path.glob("pwned_*"))


async def test_journal_gone_mid_request_answers_503_and_writes_nothing(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """The backend serving the request is terminated inside its transaction: 503, no rows."""
    client = await make_client()
    assert (await client.get("/readyz")).status == 200
    with (
        psycopg.connect(journal_dsn, autocommit=True) as blocker,
        psycopg.connect(journal_dsn, autocommit=True) as observer,
    ):
        # Hold the rule+target lock the ingest transaction will wait for, after it has
        # already inserted the notification and the alert.
        target = (
            '{"alertname":"TaskmedicStaleRows","check":"tree_status_cache",'
            '"instance":"exporter-1:9808","job":"taskmedic","severity":"warning"}'
        )
        blocker.execute("BEGIN")
        blocker.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s || chr(31) || %s))",
            ("refresh-tree-status", target),
        )
        request = asyncio.ensure_future(post(client, payload("firing_stale_rows")))

        def waiting_backend() -> int | None:
            # pg_stat_activity is a snapshot per transaction: ask from an autocommit session.
            row = observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s AND datname = current_database()",
                ("%pg_advisory_xact_lock%",),
            ).fetchone()
            return row[0] if row else None

        pid = await asyncio.to_thread(wait_for, waiting_backend, 10, 0.05, "ingest to block")
        blocker.execute("SELECT pg_terminate_backend(%s)", (pid,))
        status, body = await request
        blocker.execute("ROLLBACK")
    assert status == 503, body
    assert "nothing was recorded" in body["error"]
    assert journal_counts(journal_dsn) == {
        "notifications": 0,
        "alerts": 0,
        "actions": 0,
        "steps": 0,
        "events": 0,
    }
    # The journal is back: the retry Alertmanager sends is recorded normally.
    status, _ = await post(client, payload("firing_stale_rows"))
    assert status == 200
    assert journal_counts(journal_dsn)["actions"] == 1


async def test_a_pending_action_wakes_executors_with_notify_on_commit(
    make_client: MakeClient, journal_dsn: str
) -> None:
    """Executors LISTEN on taskmedic_actions; the id arrives once the transaction committed."""
    client = await make_client()
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("LISTEN taskmedic_actions")
        conn.execute("LISTEN taskmedic_state")
        _, body = await post(client, payload("firing_stale_rows"))
        got = {(n.channel, n.payload) for n in conn.notifies(timeout=2, stop_after=2)}
    action_id = str(body["actions"][0]["id"])
    assert got == {("taskmedic_actions", action_id), ("taskmedic_state", action_id)}
