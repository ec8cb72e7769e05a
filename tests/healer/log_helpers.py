"""Writing journal rows the way the ingest and the executor do, for the log and console tests.

Each write is one transaction with the notification the executor sends (contract 5), so the
readers under test see exactly what they would see in production.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
from psycopg.types.json import Jsonb

from healer.plan import Plan, PlanStep, ScriptSpec

FINAL = ("succeeded", "failed", "cancelled", "skipped")


def sample_plan(rule: str = "refresh-tree-status", steps: int = 1) -> Plan:
    return Plan(
        rule=rule,
        steps=[
            PlanStep(
                name=f"step {i}",
                kind="script",
                script=ScriptSpec(argv=["/bin/echo", f"hello {i}"], timeout=30),
            )
            for i in range(steps)
        ],
        alert={"labels": {"alertname": "TaskmedicStaleRows", "check": "tree_status_cache"}},
    )


async def create_action(
    conn: psycopg.AsyncConnection[Any],
    *,
    rule: str = "refresh-tree-status",
    state: str = "running",
    steps: int = 1,
    labels: dict[str, str] | None = None,
    created_at: datetime | None = None,
) -> int:
    """An alert and its action (with `steps` steps), committed; returns the action id."""
    labels = labels or {"alertname": "TaskmedicStaleRows", "check": "tree_status_cache"}
    plan = sample_plan(rule, steps)
    now = created_at or datetime.now(UTC)
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO notifications (receiver, status, payload) VALUES ('am', 'firing', %s)"
            " RETURNING id",
            (Jsonb({"version": "4"}),),
        )
        (nid,) = await cur.fetchone()  # type: ignore[misc]
        fp = f"fp{nid}"
        cur = await conn.execute(
            "INSERT INTO alerts (notification_id, status, fingerprint, starts_at, labels)"
            " VALUES (%s, 'firing', %s, %s, %s) RETURNING id",
            (nid, fp, now, Jsonb(labels)),
        )
        (alert_id,) = await cur.fetchone()  # type: ignore[misc]
        started = now if state not in ("pending", "awaiting_approval", "skipped") else None
        finished = now + timedelta(seconds=3) if state in FINAL else None
        cur = await conn.execute(
            "INSERT INTO actions (rule, fingerprint, starts_at, alert_id, labels, state, plan,"
            " plan_hash, created_at, started_at, finished_at, approval_expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                rule,
                fp,
                now,
                alert_id,
                Jsonb(labels),
                state,
                Jsonb(json.loads(plan.canonical())),
                plan.hash(),
                now,
                started,
                finished,
                now + timedelta(hours=1) if state == "awaiting_approval" else None,
            ),
        )
        (action_id,) = await cur.fetchone()  # type: ignore[misc]
        for i, s in enumerate(plan.steps):
            await conn.execute(
                "INSERT INTO steps (action_id, idx, name, kind) VALUES (%s, %s, %s, %s)",
                (action_id, i, s.name, s.kind),
            )
        await conn.execute(
            "INSERT INTO events (action_id, actor, kind, to_state)"
            " VALUES (%s, 'test', 'created', %s)",
            (action_id, state),
        )
    return int(action_id)


async def append_chunk(
    conn: psycopg.AsyncConnection[Any],
    action_id: int,
    data: bytes | str,
    *,
    stream: str = "stdout",
    step: int = 0,
    at: datetime | None = None,
) -> int:
    """One log chunk and its `taskmedic_log` notification, committed; returns the chunk id."""
    raw = data.encode() if isinstance(data, str) else data
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO log_chunks (action_id, step_idx, stream, at, data)"
            " VALUES (%s, %s, %s, coalesce(%s, now()), %s) RETURNING id",
            (action_id, step, stream, at, raw),
        )
        (chunk_id,) = await cur.fetchone()  # type: ignore[misc]
        await conn.execute("SELECT pg_notify('taskmedic_log', %s)", (str(action_id),))
    return int(chunk_id)


async def set_state(
    conn: psycopg.AsyncConnection[Any], action_id: int, state: str, *, step_state: str | None = None
) -> None:
    """Move the action to `state` with its event and `taskmedic_state` notification."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE actions SET state = %s,"
            " finished_at = CASE WHEN %s THEN now() ELSE finished_at END,"
            " started_at = CASE WHEN %s = 'running' THEN coalesce(started_at, now())"
            "                   ELSE started_at END"
            " WHERE id = %s RETURNING (SELECT state FROM actions WHERE id = %s)",
            (state, state in FINAL, state, action_id, action_id),
        )
        (before,) = await cur.fetchone()  # type: ignore[misc]
        if step_state is not None:
            await conn.execute(
                "UPDATE steps SET state = %s, exit_code = %s,"
                " started_at = coalesce(started_at, now()), finished_at = now()"
                " WHERE action_id = %s",
                (step_state, 0 if step_state == "succeeded" else 1, action_id),
            )
        await conn.execute(
            "INSERT INTO events (action_id, actor, kind, from_state, to_state)"
            " VALUES (%s, 'test', 'state', %s, %s)",
            (action_id, before, state),
        )
        await conn.execute("SELECT pg_notify('taskmedic_state', %s)", (str(action_id),))


# --- Server-Sent Events, read as a browser's EventSource would --------------------------------


@dataclass
class Event:
    event: str
    data: str
    id: str | None


async def read_events(resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """Parse an event stream (the fields taskmedic sends: id, event, data; comments skipped)."""
    data: list[str] = []
    event = "message"
    event_id: str | None = None
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or event != "message" or event_id is not None:
                yield Event(event, "\n".join(data), event_id)
            data, event, event_id = [], "message", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
