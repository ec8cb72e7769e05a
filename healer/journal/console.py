"""The web console's reads. The console never writes: approve and cancel go through the API,
which records the state change with its event (`healer.journal.actions`)."""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from healer.journal import host_runs
from healer.journal.queries import q

__all__ = ["ActionPage", "action_page", "actions", "rules"]

Row = dict[str, Any]
# The action (None when there is no such action), its steps and its events.
ActionPage = tuple[Row | None, list[Row], list[Row]]


async def _rows(
    conn: AsyncConnection[Any], query: LiteralString, params: dict[str, Any]
) -> list[Row]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def actions(
    conn: AsyncConnection[Any],
    *,
    state: str | None,
    rule: str | None,
    before: int | None,
    limit: int,
) -> list[Row]:
    """Recent actions, newest first, optionally of one state and/or one rule, older than the
    id `before`."""
    params = {"state": state, "rule": rule, "before": before, "limit": limit}
    found = await _rows(conn, q("console_actions"), params)
    counts = await host_runs.counts(conn, [a["id"] for a in found]) if found else {}
    for a in found:
        a["hosts"] = counts.get(a["id"])  # runs on other hosts by outcome; None: none
    return found


async def rules(conn: AsyncConnection[Any]) -> list[str]:
    """The rules that have actions, for the filter."""
    return [r["rule"] for r in await _rows(conn, q("console_rules"), {})]


async def action_page(conn: AsyncConnection[Any], action_id: int) -> ActionPage:
    """One action with its alert, its steps (each with its runs on other hosts, `hosts`)
    and its events."""
    p = {"id": action_id}
    found = await _rows(conn, q("console_action"), p)
    steps = await _rows(conn, q("console_steps"), p)
    runs = await host_runs.of_action(conn, action_id) if steps else []
    for s in steps:
        s["hosts"] = [r for r in runs if r["step_idx"] == s["idx"]]
    events = await _rows(conn, q("console_events"), p)
    return (found[0] if found else None), steps, events
