"""Putting actions into a journal by hand (as ingest would) and reading what became of them.

`insert_action` writes a notification, its alert, the action with its stored `Plan` and
plan_hash, the step rows and the event, then notifies `taskmedic_actions`: the same rows
ingest writes, without the webhook, so executor tests control the plan exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from exporter.config import Config
from healer.executor import Executor
from healer.plan import Plan, PlanStep, ScriptSpec, SqlSpec, UndoSpec

T = TypeVar("T")


class StartExecutor(Protocol):
    """The `executors` fixture: starts an Executor on the test's journal."""

    async def __call__(self, config: Config | None = None, **kw: Any) -> Executor: ...


def script(name: str, argv: list[str], *, undo: list[str] | None = None, **kw: Any) -> PlanStep:
    """A script step; `undo` is the argv of its undo script."""
    return PlanStep(
        name=name,
        kind="script",
        script=ScriptSpec(argv=argv, **kw),
        undo=UndoSpec(script=ScriptSpec(argv=undo)) if undo else None,
    )


def sh(name: str, code: str, **kw: Any) -> PlanStep:
    """A script step running `sh -c code` (the test chooses a shell; the executor never does)."""
    return script(name, ["sh", "-c", code], **kw)


def sql(
    name: str,
    database: str,
    query: str,
    params: dict[str, Any] | None = None,
    *,
    undo: str | None = None,
) -> PlanStep:
    return PlanStep(
        name=name,
        kind="sql",
        sql=SqlSpec(database=database, query=query, params=params or {}),
        undo=UndoSpec(sql=SqlSpec(database=database, query=undo, params=params or {}))
        if undo
        else None,
    )


def plan(*steps: PlanStep, rule: str = "test-rule", **kw: Any) -> Plan:
    kw.setdefault("alert", {"labels": {"alertname": "TestAlert"}, "status": "firing"})
    return Plan(rule=rule, steps=list(steps), **kw)


async def insert_action(
    dsn: str,
    p: Plan,
    *,
    state: str = "pending",
    dry_run: bool = False,
    approval_expires_at: datetime | None = None,
) -> int:
    """One action as ingest writes it, in one transaction, with the pending notification."""
    labels = p.alert.get("labels", {})
    fingerprint = uuid.uuid4().hex[:16]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "INSERT INTO notifications (receiver, status, payload) VALUES ('test', 'firing', %s)"
            " RETURNING id",
            (Jsonb({"alerts": [p.alert]}),),
        )
        notification_id = (await cur.fetchone() or [0])[0]
        cur = await conn.execute(
            "INSERT INTO alerts (notification_id, status, fingerprint, starts_at, labels)"
            " VALUES (%s, 'firing', %s, now(), %s) RETURNING id",
            (notification_id, fingerprint, Jsonb(labels)),
        )
        alert_id = (await cur.fetchone() or [0])[0]
        cur = await conn.execute(
            "INSERT INTO actions (rule, fingerprint, starts_at, alert_id, labels, state, dry_run,"
            " plan, plan_hash, on_interrupt, approval_expires_at)"
            " VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                p.rule,
                fingerprint,
                alert_id,
                Jsonb(labels),
                state,
                dry_run,
                Jsonb(p.model_dump(mode="json")),
                p.hash(),
                p.on_interrupt,
                approval_expires_at,
            ),
        )
        action_id: int = (await cur.fetchone() or [0])[0]
        for idx, step in enumerate(p.steps):
            await conn.execute(
                "INSERT INTO steps (action_id, idx, name, kind) VALUES (%s, %s, %s, %s)",
                (action_id, idx, step.name, step.kind),
            )
        await conn.execute(
            "INSERT INTO events (action_id, actor, kind, to_state)"
            " VALUES (%s, 'test', 'state', %s)",
            (action_id, state),
        )
        if state == "pending":
            await conn.execute("SELECT pg_notify('taskmedic_actions', %s)", (str(action_id),))
    return action_id


async def fetch(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def action(dsn: str, action_id: int) -> dict[str, Any]:
    return (await fetch(dsn, "SELECT * FROM actions WHERE id = %s", action_id))[0]


async def steps(dsn: str, action_id: int) -> list[dict[str, Any]]:
    return await fetch(dsn, "SELECT * FROM steps WHERE action_id = %s ORDER BY idx", action_id)


async def chunks(dsn: str, action_id: int) -> list[dict[str, Any]]:
    return await fetch(dsn, "SELECT * FROM log_chunks WHERE action_id = %s ORDER BY id", action_id)


async def events(dsn: str, action_id: int) -> list[dict[str, Any]]:
    return await fetch(dsn, "SELECT * FROM events WHERE action_id = %s ORDER BY id", action_id)


async def output(dsn: str, action_id: int, stream: str, step: int | None = None) -> bytes:
    return b"".join(
        bytes(c["data"])
        for c in await chunks(dsn, action_id)
        if c["stream"] == stream and (step is None or c["step_idx"] == step)
    )


async def until(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = 20.0, what: str = ""
) -> T:
    """Await `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


async def state_in(dsn: str, action_id: int, *states: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the action is in one of `states`; returns its row."""

    async def check() -> dict[str, Any] | None:
        row = await action(dsn, action_id)
        return row if row["state"] in states else None

    return await until(check, timeout, f"action {action_id} to become {'/'.join(states)}")


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def now() -> datetime:
    return datetime.now(UTC)


def app_config(dsn: str, **more: Any) -> Config:
    """A config whose database `app` is `dsn`."""
    return Config.model_validate({"databases": {"app": {"dsn": dsn}}, **more})
