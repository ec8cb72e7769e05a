"""Reading and steering actions in the journal: list, show, approve, cancel.

Shared by the HTTP API and the `taskmedic actions` CLI, so both obey the same rules: an
approval names the plan hash it approves (a plan that changed is not approved), and every
state change is one transaction with its event row and its notifications.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from healer.journal import channels, events
from healer.journal.queries import q

__all__ = [
    "STATES",
    "ActionConflict",
    "ActionNotFound",
    "approve",
    "cancel",
    "get_action",
    "list_actions",
]

STATES = (
    "pending",
    "awaiting_approval",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
    "skipped",
)


class ActionNotFound(LookupError):
    """No action has this id."""


class ActionConflict(Exception):
    """The action is not in a state that allows this (HTTP 409); the message says why."""


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
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            q("list_actions"),
            {
                "before": before,
                "states": states or None,
                "rule": rule,
                "since": since,
                "limit": limit + 1,
            },
        )
        rows = await cur.fetchall()
    items = [_item(r) for r in rows[:limit]]
    more = len(rows) > limit
    return items, (str(items[-1]["id"]) if more and items else None)


async def get_action(conn: AsyncConnection[Any], action_id: int) -> dict[str, Any]:
    """One action with its alert, plan, steps (outcomes, timings) and audit events."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("get_action"), {"id": action_id})
        row = await cur.fetchone()
        if row is None:
            raise ActionNotFound(action_id)
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
                "on_interrupt": row["on_interrupt"],
            }
        )
        await cur.execute(q("get_steps"), {"id": action_id})
        out["steps"] = [{k: _iso(v) for k, v in s.items()} for s in await cur.fetchall()]
        await cur.execute(q("get_events"), {"id": action_id})
        out["events"] = [{k: _iso(v) for k, v in e.items()} for e in await cur.fetchall()]
    return out


async def _event(
    conn: AsyncConnection[Any],
    action_id: int,
    actor: str,
    kind: str,
    from_state: str,
    to_state: str,
    message: str,
) -> None:
    await events.record(conn, action_id, actor, kind, from_state, to_state, message)


async def _lock(conn: AsyncConnection[Any], action_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("lock_action"), {"id": action_id})
        row = await cur.fetchone()
    if row is None:
        raise ActionNotFound(action_id)
    return row


async def approve(
    conn: AsyncConnection[Any], action_id: int, plan_hash: str, actor: str
) -> dict[str, Any]:
    """Approve the plan with this hash: the action becomes pending and an executor claims it."""
    async with conn.transaction():
        row = await _lock(conn, action_id)
        if row["state"] != "awaiting_approval":
            raise ActionConflict(f"action {action_id} is {row['state']}, not awaiting_approval")
        if row["expired"]:
            raise ActionConflict(
                f"the approval of action {action_id} expired at {_iso(row['approval_expires_at'])}"
            )
        if plan_hash != row["plan_hash"]:
            raise ActionConflict(
                "plan_hash does not match the action's plan: review the plan again "
                "(GET /api/actions/ID) and approve its current hash"
            )
        await conn.execute(q("approve_action"), {"id": action_id, "actor": actor})
        await _event(
            conn,
            action_id,
            actor,
            "approved",
            "awaiting_approval",
            "pending",
            f"plan {plan_hash} approved by {actor}",
        )
        await channels.notify(conn, channels.ACTIONS, action_id)
    return {"id": action_id, "state": "pending", "approved_by": actor}


async def cancel(conn: AsyncConnection[Any], action_id: int, actor: str) -> dict[str, Any]:
    """Cancel an action not started yet; ask the executor to stop a running one."""
    async with conn.transaction():
        row = await _lock(conn, action_id)
        state = row["state"]
        if state in ("pending", "awaiting_approval"):
            reason = f"cancelled by {actor}"
            await conn.execute(q("cancel_action"), {"id": action_id, "reason": reason})
            await conn.execute(q("cancel_pending_steps"), {"action_id": action_id})
            await _event(conn, action_id, actor, "cancelled", state, "cancelled", reason)
            return {"id": action_id, "state": "cancelled"}
        if state == "running":
            if row["cancel_requested_at"] is None:
                await conn.execute(q("request_cancel"), {"id": action_id})
                await _event(
                    conn,
                    action_id,
                    actor,
                    "cancel_requested",
                    "running",
                    "running",
                    f"cancel requested by {actor}; the executor stops the running step",
                )
                await channels.notify(conn, channels.CANCEL, action_id)
            return {"id": action_id, "state": "running", "cancel_requested": True}
    raise ActionConflict(f"action {action_id} is {state}: there is nothing left to cancel")
