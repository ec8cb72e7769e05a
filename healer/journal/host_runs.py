"""Host runs: a step's runs on other hosts, written by the healer that holds the action and by
the agents (or by a healer applying what an agent reported by message).

The healer writes every host run (`pending`) under the action's fence before any message is
sent, marks a batch `sent` with a deadline, then sends; an agent takes a run only from `sent`
and before its deadline (`start`), so a redelivered message, a run that timed out in its queue
or one that was cancelled is never started. After that the agent writes only with the run's
id and token and only while the run is `running`; a run that was interrupted, cancelled or
timed out refuses its agent's writes, which is how the agent learns to stop.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from healer.journal import channels, logs
from healer.journal.queries import q
from healer.journal.values import storable

__all__ = [
    "FAILED",
    "FINAL",
    "HostRun",
    "Target",
    "append",
    "close_open",
    "create",
    "done_hosts",
    "expire",
    "finish",
    "mark_sent",
    "renew",
    "rows",
    "start",
]

Conn = AsyncConnection[DictRow]

FINAL = frozenset({"succeeded", "failed", "timed_out", "interrupted", "cancelled", "skipped"})
FAILED = frozenset({"failed", "timed_out", "interrupted"})


@dataclass(frozen=True, slots=True)
class Target:
    """Which runs: one step (or its undo) of one attempt of one action."""

    action_id: int
    step_idx: int
    purpose: str  # step | undo
    attempt: int

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HostRun:
    id: int
    host: str
    queue: str
    batch: int
    token: str
    state: str
    agent: str = ""
    exit_code: int | None = None
    error: str = ""
    result: dict[str, Any] | None = None
    output_bytes: int = 0
    seconds: float | None = None


def _run(row: DictRow) -> HostRun:
    return HostRun(
        id=row["id"],
        host=row["host"],
        queue=row["queue"],
        batch=row["batch"],
        token=row["token"],
        state=row["state"],
        agent=row.get("agent") or "",
        exit_code=row.get("exit_code"),
        error=row.get("error") or "",
        result=row.get("result"),
        output_bytes=row.get("output_bytes") or 0,
        seconds=row.get("seconds"),
    )


# --- the healer's side (the caller holds the action's fence) --------------------------------


async def done_hosts(conn: Conn, target: Target) -> set[str]:
    """Hosts whose run of this step succeeded in an earlier attempt."""
    cur = await conn.execute(q("hr_done_hosts"), target.params())
    return {row["host"] for row in await cur.fetchall()}


async def create(
    conn: Conn, target: Target, hosts: Sequence[tuple[str, str, int]]
) -> list[HostRun]:
    """A `pending` run per (host, queue, batch); existing ones (a replayed write) are kept."""
    out = []
    for host, queue, batch in hosts:
        cur = await conn.execute(
            q("hr_create"),
            {
                **target.params(),
                "host": host,
                "queue": queue,
                "batch": batch,
                "token": secrets.token_hex(16),
            },
        )
        row = await cur.fetchone()
        assert row is not None
        out.append(_run(row))
    return out


async def mark_sent(conn: Conn, ids: Sequence[int], within: float) -> dict[int, float]:
    """`pending` -> `sent` with a deadline `within` seconds away; returns id -> seconds left."""
    cur = await conn.execute(q("hr_mark_sent"), {"ids": list(ids), "within": within})
    return {row["id"]: row["expires_in"] for row in await cur.fetchall()}


async def rows(conn: Conn, target: Target) -> list[HostRun]:
    cur = await conn.execute(q("hr_rows"), target.params())
    return [_run(r) for r in await cur.fetchall()]


async def expire(conn: Conn, target: Target) -> None:
    """Runs past their deadline -> `timed_out`; running ones whose lease expired ->
    `interrupted` (`rows` then shows them)."""
    params = {"action_id": target.action_id, "step_idx": target.step_idx}
    await conn.execute(q("hr_expire_unstarted"), params)
    await conn.execute(q("hr_expire_running"), params)


async def close_open(
    conn: Conn, target: Target, state: str, error: str, *, only_pending: bool = False
) -> list[tuple[int, str, str]]:
    """Runs not finished become `state` (cancelled, skipped, interrupted); returns their
    (id, token, host), so their agents can be told to stop."""
    cur = await conn.execute(
        q("hr_close_open"),
        {**target.params(), "state": state, "error": storable(error), "only_pending": only_pending},
    )
    return [(row["id"], row["token"], row["host"]) for row in await cur.fetchall()]


async def close_open_one(conn: Conn, run_id: int, state: str, error: str) -> None:
    """One run not started (its message could not be sent) becomes `state`."""
    await conn.execute(
        q("hr_close_one"), {"run_id": run_id, "state": state, "error": storable(error)}
    )


async def interrupt_action(conn: Conn, action_id: int, why: str) -> None:
    """Every open run of an interrupted action stops (its agents' next write is refused)."""
    await conn.execute(q("hr_interrupt_action"), {"action_id": action_id, "why": storable(why)})


# --- the agent's side (or the healer applying an agent's message) ---------------------------


async def start(
    conn: Conn, run_id: int, token: str, agent: str, lease: float
) -> dict[str, Any] | None:
    """Take a sent run; returns the script of the action's stored plan it runs, None when the
    run was started, finished or expired already."""
    cur = await conn.execute(
        q("hr_start"), {"run_id": run_id, "token": token, "agent": agent, "lease": lease}
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return dict(row["script"] or {})


async def renew(conn: Conn, run_id: int, token: str, lease: float) -> bool:
    """Extend the lease; False when the run is no longer running (stop it)."""
    cur = await conn.execute(q("hr_renew"), {"run_id": run_id, "token": token, "lease": lease})
    return await cur.fetchone() is not None


async def append(
    conn: Conn,
    run_id: int,
    token: str,
    chunks: Sequence[logs.NewChunk],
    output_bytes: int | None,
    seq: int | None = None,
) -> bool:
    """Append output of a running run (with `seq`: only the message after the last applied
    one). False when the run is no longer running, or `seq` is not the next one."""
    cur = await conn.execute(q("hr_fence"), {"run_id": run_id, "token": token})
    row = await cur.fetchone()
    if row is None:
        return False
    if seq is not None and seq != row["seq"] + 1:
        return False
    await logs.append(conn, row["action_id"], row["step_idx"], chunks, None, host=row["host"])
    await conn.execute(
        q("hr_progress"),
        {
            "run_id": run_id,
            "output_bytes": output_bytes,
            "seq": seq if seq is not None else row["seq"],
        },
    )
    return True


async def finish(
    conn: Conn,
    run_id: int,
    token: str,
    *,
    state: str,
    exit_code: int | None,
    error: str,
    result: dict[str, Any],
    output_bytes: int,
    seq: int = 0,
) -> bool:
    """The run's outcome; False when it was no longer running (cancelled, timed out)."""
    cur = await conn.execute(
        q("hr_finish"),
        {
            "run_id": run_id,
            "token": token,
            "state": state,
            "exit_code": exit_code,
            "error": storable(error),
            "result": Jsonb(storable(result)),
            "output_bytes": output_bytes,
            "seq": seq,
        },
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await channels.notify(conn, channels.LOG, row["action_id"])  # followers see it ended
    return True


async def state(conn: Conn, run_id: int, token: str) -> tuple[str, int] | None:
    cur = await conn.execute(q("hr_state"), {"run_id": run_id, "token": token})
    row = await cur.fetchone()
    return None if row is None else (row["state"], row["seq"])


# --- pauses, and what the API and console show ------------------------------------------------


async def pause(conn: Conn, action_id: int) -> None:
    await conn.execute(q("hr_pause"), {"action_id": action_id})


async def paused(conn: Conn, action_id: int) -> tuple[bool, str | None]:
    """(resumed?, by whom)."""
    cur = await conn.execute(q("hr_paused"), {"action_id": action_id})
    row = await cur.fetchone()
    if row is None:
        return False, None
    return bool(row["resumed"]), row["resumed_by"]


async def unpause(conn: Conn, action_id: int) -> None:
    await conn.execute(q("hr_unpause"), {"action_id": action_id})


async def resume(conn: Conn, action_id: int, by: str) -> bool:
    """Resume a paused multi-host step; False when the action is not paused."""
    cur = await conn.execute(q("hr_resume"), {"action_id": action_id, "by": by})
    return await cur.fetchone() is not None


# The two reads below serve the API, the CLI and the console, whose connections return
# tuples: they ask for dict rows themselves.


async def of_action(conn: AsyncConnection[Any], action_id: int) -> list[dict[str, Any]]:
    """Every host run of the action, by step, purpose, attempt, then in creation order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("hr_of_action"), {"action_id": action_id})
        return await cur.fetchall()


async def counts(conn: AsyncConnection[Any], ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Per action of `ids` that has host runs: how many succeeded, failed, in all."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("hr_counts"), {"ids": list(ids)})
        rows = await cur.fetchall()
    return {
        r["action_id"]: {"succeeded": r["succeeded"], "failed": r["failed"], "total": r["total"]}
        for r in rows
    }
