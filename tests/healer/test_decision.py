"""Whether an alert becomes an action is decided in one place, the journal's taskmedic_decide:
ingest runs it as it records, `rules replay` asks it for each stored alert, and `rules test`
shows what it gives a first firing."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from healer.ingest import decision_inputs, ingest
from healer.journal import replay as journal_replay
from healer.journal.ingest_writer import IngestWriter
from healer.journal.pool import open_pool
from healer.rules import load_rules
from healer.rules.models import Rule
from healer.rules.tools import first_firing, replay
from healer.webhook import parse_notification
from tests.healer.ingest_helpers import config_for, payload, upgraded, with_alert

Conn = psycopg.AsyncConnection[Any]


def rule(**spec: Any) -> Rule:
    return Rule.model_validate(
        {
            "name": "r",
            "match": {"alertname": "X"},
            "steps": [{"name": "s", "script": {"argv": ["/bin/true"]}}],
            **spec,
        }
    )


async def decide(
    conn: Conn, r: Rule, *, render_error: str | None = None, in_cooldown: int, in_limit: int
) -> tuple[str, str]:
    inputs = decision_inputs(r, render_error)
    return await journal_replay.decide(conn, inputs, in_cooldown=in_cooldown, in_limit=in_limit)


COOLDOWN = "cooldown: an action of this rule for the same target was created within the last 10m"
CIRCUIT = (
    "circuit open: {n} actions of this rule for the same target within 1h (limit 2); "
    "a human should look"
)


@pytest.fixture
async def conn(pg_dsn: str) -> Any:
    await upgraded(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
        yield c


@pytest.mark.parametrize(
    ("spec", "render_error", "in_cooldown", "in_limit", "want"),
    [
        ({}, None, 0, 0, ("pending", "")),
        ({}, None, 7, 7, ("pending", "")),  # no cooldown, no limit: the counts decide nothing
        ({"approval": True}, None, 0, 0, ("awaiting_approval", "waiting for approval")),
        ({"cooldown": "10m"}, None, 0, 5, ("pending", "")),
        ({"cooldown": "10m", "approval": True}, None, 1, 0, ("skipped", COOLDOWN)),
        ({"limit": {"count": 2, "per": "1h"}}, None, 0, 1, ("pending", "")),
        ({"limit": {"count": 2, "per": "1h"}}, None, 0, 2, ("skipped", CIRCUIT.format(n=2))),
        ({"limit": {"count": 2, "per": "1h"}}, None, 0, 5, ("skipped", CIRCUIT.format(n=5))),
        # The cooldown is looked at before the circuit breaker, both before approval.
        (
            {"cooldown": "10m", "limit": {"count": 2, "per": "1h"}, "approval": True},
            None,
            1,
            5,
            ("skipped", COOLDOWN),
        ),
        # A plan that cannot be rendered fails whatever the counts: nothing may run.
        (
            {"cooldown": "10m", "approval": True},
            "parameter worker: no label worker",
            3,
            3,
            ("failed", "parameter worker: no label worker"),
        ),
    ],
)
async def test_the_journal_decides_cooldown_circuit_breaker_approval_and_render_failure(
    conn: Conn,
    spec: dict[str, Any],
    render_error: str | None,
    in_cooldown: int,
    in_limit: int,
    want: tuple[str, str],
) -> None:
    got = await decide(
        conn, rule(**spec), render_error=render_error, in_cooldown=in_cooldown, in_limit=in_limit
    )
    assert got == want


async def test_rules_test_shows_what_the_journal_decides_for_a_first_firing(conn: Conn) -> None:
    """`rules test` has no journal: for every kind of rule, its state and reason are the
    journal's decision with no recent action of the rule."""
    for cooldown, limit, approval, render_error in itertools.product(
        ("0s", "10m"),
        (None, {"count": 1, "per": "1h"}),
        (False, True),
        (None, "parameter worker: no label worker"),
    ):
        spec: dict[str, Any] = {"cooldown": cooldown, "approval": approval}
        if limit is not None:
            spec["limit"] = limit
        r = rule(**spec)
        want = await decide(conn, r, render_error=render_error, in_cooldown=0, in_limit=0)
        assert first_firing(r, render_error) == want, spec


RULES = """\
rules:
  - name: limited
    match: {alertname: TaskmedicStaleRows}
    limit: {count: 2, per: 1h}
    steps:
      - {name: s, script: {argv: [/bin/true]}}
  - name: cooled-approval
    match: {alertname: TaskmedicStaleRows}
    cooldown: 10m
    approval: true
    steps:
      - {name: s, script: {argv: [/bin/true]}}
  - name: needs-worker
    match: {alertname: TaskmedicStaleRows}
    params:
      worker: {label: worker, pattern: '^[a-z]+$'}
    steps:
      - {name: s, script: {argv: [/bin/echo, "{{ params.worker }}"]}}
"""


async def test_replay_predicts_exactly_what_ingest_recorded(pg_dsn: str, tmp_path: Path) -> None:
    """Four firings and a repeat, replayed through the rules that recorded them: every state
    and reason replay gives is the one ingest recorded, and the repeat is a duplicate."""
    config = config_for(tmp_path, pg_dsn, rules=RULES)
    rules = load_rules(config)
    first = payload("firing_stale_rows")
    bodies = [first, first] + [
        with_alert(first, startsAt=f"2024-05-14T09:{m}:00Z") for m in ("30", "40", "50")
    ]
    await upgraded(pg_dsn)
    pool = await open_pool(pg_dsn)
    writer = IngestWriter(pool)
    try:
        for body in bodies:
            n, raw = parse_notification(json.dumps(body).encode())
            await ingest(writer, n, raw, rules, config.healer)
    finally:
        await writer.close()
        await pool.close()

    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        stored = await journal_replay.alerts_since(conn, datetime.now(UTC) - timedelta(hours=1))
        outcomes = await replay(conn, config, rules, stored)

    predicted = [[(r.rule, r.state, r.reason) for r in o.rules] for o in outcomes]
    recorded = [[(a["rule"], a["state"], a["reason"]) for a in o.recorded] for o in outcomes]
    assert [[p for p in ps if p[1] != "duplicate"] for ps in predicted] == recorded
    assert [r for _, r, _ in predicted[1]] == ["duplicate"] * 3
    assert [[s for _, s, _ in ps] for ps in recorded] == [
        ["pending", "awaiting_approval", "failed"],
        [],
        ["pending", "skipped", "failed"],
        ["skipped", "skipped", "failed"],
        ["skipped", "skipped", "failed"],
    ]
    assert recorded[3][0][2] == CIRCUIT.format(n=2)
    assert recorded[2][1][2] == COOLDOWN
