"""Actions as the HTTP API and the `taskmedic actions` CLI show them: list, show, approve, cancel.

The journal (`healer.journal.actions`) reads the rows and makes the state changes, under the
rules both share; this module turns rows into the JSON both print.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from healer.journal import actions as journal_actions
from healer.journal import events as journal_events
from healer.journal import host_runs
from healer.journal.actions import STATES, ActionConflict, ActionNotFound, approve, cancel

__all__ = [
    "STATES",
    "ActionConflict",
    "ActionNotFound",
    "approve",
    "cancel",
    "get_action",
    "list_actions",
    "resume",
]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _item(row: dict[str, Any]) -> dict[str, Any]:
    started, finished = row.get("started_at"), row.get("finished_at")
    duration = (finished - started).total_seconds() if started and finished else None
    return {
        "id": row["id"],
        "rule": row["rule"],
        "state": row["state"],
        "reason": row["reason"],
        "dry_run": row["dry_run"],
        "trigger": row["trigger"],
        "target": row["target"],
        "alert": {
            "alertname": row["labels"].get("alertname", ""),
            "fingerprint": row["fingerprint"],
            "status": row["alert_status"],
            "starts_at": _iso(row["starts_at"]),
            "labels": row["labels"],
            "annotations": row["annotations"],
        },
        "plan_hash": row["plan_hash"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "duration_seconds": duration,
        "approval_expires_at": _iso(row["approval_expires_at"]),
        "cancel_requested_at": _iso(row["cancel_requested_at"]),
    }


async def list_actions(
    conn: AsyncConnection[Any],
    *,
    states: list[str] | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    before: int | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of actions, newest first, and the cursor of the next page (None at the end)."""
    rows = await journal_actions.list_rows(
        conn, states=states or None, rule=rule, since=since, before=before, limit=limit + 1
    )
    items = [_item(r) for r in rows[:limit]]
    counts = await host_runs.counts(conn, [i["id"] for i in items]) if items else {}
    for item in items:
        # Steps on other hosts: how many host runs succeeded and failed (null: none).
        item["hosts"] = counts.get(item["id"])
    more = len(rows) > limit
    return items, (str(items[-1]["id"]) if more and items else None)


async def get_action(conn: AsyncConnection[Any], action_id: int) -> dict[str, Any]:
    """One action with its alert, plan, steps (outcomes, timings) and audit events."""
    row = await journal_actions.action_row(conn, action_id)
    out = _item(row)
    out["alert"].update(
        {
            "ends_at": _iso(row["ends_at"]),
            "generator_url": row["generator_url"],
            "alert_id": row["alert_id"],
            "notification_id": row["notification_id"],
        }
    )
    out.update(
        {
            "plan": row["plan"],
            "attempt": row["attempt"],
            "lease_owner": row["lease_owner"],
            "lease_expires_at": _iso(row["lease_expires_at"]),
            "approved_by": row["approved_by"],
            "approved_at": _iso(row["approved_at"]),
            "cancelled_by": row["cancelled_by"],
            "cancelled_at": _iso(row["cancelled_at"]),
            "on_interrupt": row["on_interrupt"],
            "paused_at": _iso(row["paused_at"]),
            "resumed_by": row["resumed_by"],
        }
    )
    steps = await journal_actions.step_rows(conn, action_id)
    out["steps"] = [{k: _iso(v) for k, v in s.items()} for s in steps]
    runs = [{k: _iso(v) for k, v in r.items()} for r in await host_runs.of_action(conn, action_id)]
    for step in out["steps"]:
        # The step's runs on other hosts, every attempt and the undo's too, oldest first.
        step["hosts"] = [r for r in runs if r["step_idx"] == step["idx"]]
    events = await journal_actions.event_rows(conn, action_id)
    out["events"] = [{k: _iso(v) for k, v in e.items()} for e in events]
    return out


async def resume(conn: AsyncConnection[Any], action_id: int, actor: str) -> dict[str, Any]:
    """Resume a multi-host step paused after a batch; the audit trail names `actor`."""
    async with conn.transaction():
        if not await host_runs.resume(conn, action_id, actor):
            row = await journal_actions.action_row(conn, action_id)  # ActionNotFound
            raise ActionConflict(
                f"action {action_id} is {row['state']} and not paused: nothing to resume"
            )
        await journal_events.record(
            conn, action_id, actor, "resume", None, None, f"resumed by {actor}"
        )
    return {"id": action_id, "resumed_by": actor}
