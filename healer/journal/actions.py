"""Reading and steering actions: the rows behind list and show, and approve and cancel.

Shared by the HTTP API and the `taskmedic actions` CLI (through `healer.actions`), so both obey
the same rules: an approval names the plan hash it approves (a plan that changed is not
approved), and every state change is one transaction, under the action's row lock, with its
event row and its notifications.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from exporter.base.errors import TaskmedicError
from healer.journal import channels, events
from healer.journal.queries import q

__all__ = [
    "STATES",
    "ActionConflict",
    "ActionNotFound",
    "action_row",
    "approve",
    "cancel",
    "event_rows",
    "list_rows",
    "step_rows",
]

# The states of an action, as the journal's CHECK constraint on actions.state allows them.
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


class ActionNotFound(TaskmedicError, LookupError):
    """No action has this id."""


class ActionConflict(TaskmedicError):
    """The action is not in a state that allows this (HTTP 409); the message says why."""


async def list_rows(
    conn: AsyncConnection[Any],
    *,
    states: list[str] | None,
    rule: str | None,
    since: datetime | None,
    before: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` actions with their alert, newest first, older than the id `before`."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            q("list_actions"),
            {"before": before, "states": states, "rule": rule, "since": since, "limit": limit},
        )
        return await cur.fetchall()


async def action_row(conn: AsyncConnection[Any], action_id: int) -> dict[str, Any]:
    """One action with its alert (ActionNotFound when there is none)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("get_action"), {"id": action_id})
        row = await cur.fetchone()
    if row is None:
        raise ActionNotFound(action_id)
    return row


async def step_rows(conn: AsyncConnection[Any], action_id: int) -> list[dict[str, Any]]:
    """The action's steps in order: outcomes, timings, undo."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("get_steps"), {"id": action_id})
        return await cur.fetchall()


async def event_rows(conn: AsyncConnection[Any], action_id: int) -> list[dict[str, Any]]:
    """The action's audit trail, oldest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("get_events"), {"id": action_id})
        return await cur.fetchall()


async def _lock(conn: AsyncConnection[Any], action_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("lock_action"), {"id": action_id})
        row = await cur.fetchone()
    if row is None:
        raise ActionNotFound(action_id)
    return row


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


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
        await events.record(
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
            await conn.execute(
                q("cancel_action"), {"id": action_id, "reason": reason, "actor": actor}
            )
            await conn.execute(q("cancel_pending_steps"), {"action_id": action_id})
            await events.record(conn, action_id, actor, "cancelled", state, "cancelled", reason)
            return {"id": action_id, "state": "cancelled", "cancelled_by": actor}
        if state == "running":
            if row["cancel_requested_at"] is None:
                await conn.execute(q("request_cancel"), {"id": action_id, "actor": actor})
                await events.record(
                    conn,
                    action_id,
                    actor,
                    "cancel_requested",
                    "running",
                    "running",
                    f"cancel requested by {actor}; the executor stops the running step",
                )
                await channels.notify(conn, channels.CANCEL, action_id)
            return {
                "id": action_id,
                "state": "running",
                "cancel_requested": True,
                "cancelled_by": actor,
            }
    raise ActionConflict(f"action {action_id} is {state}: there is nothing left to cancel")
