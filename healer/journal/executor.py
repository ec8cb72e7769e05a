"""The executor's journal writes: claim, lease, fencing, step and action transitions, sweeping.

Why fencing: a claim increments `actions.attempt`; that number is the executor's token. Every
write about a running action first takes `exec_fence` (a share lock on the action row that
matches only the current token and owner) in the same transaction, or is itself an UPDATE
conditioned on the token. An executor that stalled past its lease and was taken over matches no
row and gets `LeaseLost`; it can never write an outcome over its successor's. The share lock
makes a takeover wait for a write already in flight, so the journal's order is the real order.

Every action state change writes its `events` row and notifies `channels.STATE` in the same
transaction, so a listener never sees a state the journal could still roll back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from healer.errors import JournalRefused, JournalUnavailable, LeaseLost
from healer.journal import channels, events, host_runs
from healer.journal.queries import q
from healer.journal.values import storable

__all__ = [
    "CLAIM_LOCK",
    "Claim",
    "Conn",
    "Fence",
    "Journal",
    "Settled",
    "claim",
    "event",
    "hold",
]

Conn = psycopg.AsyncConnection[DictRow]
T = TypeVar("T")

# Any fixed 64-bit number, the same in every replica ("tm-claim").
CLAIM_LOCK = 0x746D2D636C61696D


@dataclass(frozen=True, slots=True)
class Fence:
    """Who may write about an action: the claim's attempt token and the lease owner."""

    action_id: int
    attempt: int
    owner: str

    def params(self) -> dict[str, Any]:
        return {"action_id": self.action_id, "attempt": self.attempt, "owner": self.owner}


@dataclass(frozen=True, slots=True)
class Claim:
    id: int
    rule: str
    attempt: int
    plan: dict[str, Any]
    plan_hash: str
    dry_run: bool
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of an action the executor or the sweeper took out of `running`."""

    action_id: int
    rule: str
    state: str  # final state, or "pending" when it was put back for a retry
    duration: float | None


class Journal:
    """A connection pool and the retry policy for the executor's writes.

    A write that fails on a connection problem is retried for `retry_for` seconds (the
    journal restarting, a pool connection gone stale); after that `JournalUnavailable`. Any
    other database error is the journal refusing this write: `JournalRefused`, at once.
    """

    def __init__(self, pool: AsyncConnectionPool[Conn], retry_for: float) -> None:
        self.pool = pool
        self.retry_for = retry_for

    async def run(self, fn: Callable[[Conn], Awaitable[T]], fence: Fence | None = None) -> T:
        """Run `fn` in one transaction; with `fence`, holding it first (else `LeaseLost`)."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.retry_for),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception_type(psycopg.OperationalError),
                reraise=True,
            ):
                with attempt:
                    async with self.pool.connection() as conn, conn.transaction():
                        if fence is not None:
                            await hold(conn, fence)
                        return await fn(conn)
        except psycopg.OperationalError as exc:
            raise JournalUnavailable(f"the journal cannot be written: {exc}") from exc
        except psycopg.Error as exc:
            raise JournalRefused(refusal(exc)) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")


def refusal(exc: psycopg.Error) -> str:
    """The error's type and its primary message (never its DETAIL: that may quote the row)."""
    message = exc.diag.message_primary or str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {message}"


async def hold(conn: Conn, fence: Fence) -> bool:
    """Take the fence for this transaction; returns whether a cancel was requested."""
    cur = await conn.execute(q("exec_fence"), fence.params())
    row = await cur.fetchone()
    if row is None:
        raise LeaseLost(
            f"action {fence.action_id}: attempt {fence.attempt} of {fence.owner} is no longer "
            "the current one"
        )
    return bool(row["cancel_requested"])


async def event(
    conn: Conn,
    action_id: int,
    actor: str,
    from_state: str | None,
    to_state: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    """The audit row of a state change, and the notification followers wait for."""
    await events.record(conn, action_id, actor, "state", from_state, to_state, message, data)


async def claim(conn: Conn, owner: str, lease: float) -> Claim | None:
    """Claim the oldest pending action whose rule is under its max_concurrent, or None."""
    await conn.execute(q("exec_claim_lock"), {"lock": CLAIM_LOCK})
    cur = await conn.execute(q("exec_claim"), {"owner": owner, "lease": lease})
    row = await cur.fetchone()
    if row is None:
        return None
    await event(
        conn,
        row["id"],
        owner,
        "pending",
        "running",
        f"claimed by {owner} (attempt {row['attempt']})",
        {"attempt": row["attempt"]},
    )
    return Claim(
        id=row["id"],
        rule=row["rule"],
        attempt=row["attempt"],
        plan=row["plan"],
        plan_hash=row["plan_hash"],
        dry_run=row["dry_run"],
        cancel_requested=row["cancel_requested"],
    )


async def renew(conn: Conn, fence: Fence, lease: float) -> bool:
    """Extend the lease; returns whether a cancel was requested. `LeaseLost` if taken over."""
    cur = await conn.execute(q("exec_renew"), {**fence.params(), "lease": lease})
    row = await cur.fetchone()
    if row is None:
        raise LeaseLost(f"action {fence.action_id}: lease of attempt {fence.attempt} lost")
    return bool(row["cancel_requested"])


async def ensure_steps(conn: Conn, action_id: int, steps: Sequence[tuple[str, str]]) -> None:
    """Step rows for every plan step (ingest normally wrote them already)."""
    for idx, (name, kind) in enumerate(steps):
        await conn.execute(
            q("exec_ensure_step"), {"action_id": action_id, "idx": idx, "name": name, "kind": kind}
        )


async def step_rows(conn: Conn, action_id: int) -> list[DictRow]:
    cur = await conn.execute(q("exec_step_rows"), {"action_id": action_id})
    return await cur.fetchall()


async def step_started(conn: Conn, fence: Fence, idx: int) -> None:
    await conn.execute(q("exec_step_start"), {**fence.params(), "idx": idx})


async def step_finished(
    conn: Conn,
    fence: Fence,
    idx: int,
    *,
    state: str,
    result: dict[str, Any],
    error: str = "",
    exit_code: int | None = None,
    output_bytes: int = 0,
) -> None:
    await conn.execute(
        q("exec_step_finish"),
        {
            **fence.params(),
            "idx": idx,
            "state": state,
            "result": Jsonb(storable(result)),
            "error": storable(error),
            "exit_code": exit_code,
            "output_bytes": output_bytes,
        },
    )


async def steps_patch(
    conn: Conn, action_id: int, idxs: Sequence[int], patch: dict[str, Any]
) -> None:
    """Merge `patch` into the result of steps `idxs` (e.g. their transaction committed)."""
    await conn.execute(
        q("exec_step_patch"),
        {"action_id": action_id, "idxs": list(idxs), "patch": Jsonb(storable(patch))},
    )


async def undo_started(conn: Conn, action_id: int, idx: int) -> None:
    await conn.execute(q("exec_step_undo_start"), {"action_id": action_id, "idx": idx})


async def undo_finished(
    conn: Conn,
    action_id: int,
    idxs: Sequence[int],
    *,
    ok: bool,
    undo: dict[str, Any],
    error: str = "",
) -> None:
    """Steps `idxs` are `undone` (or `undo_failed` with `error`); `undo` says how and why."""
    await conn.execute(
        q("exec_step_undo_finish"),
        {
            "action_id": action_id,
            "idxs": list(idxs),
            "state": "undone" if ok else "undo_failed",
            "undo_error": storable(error),
            "patch": Jsonb(storable({"undo": undo})),
        },
    )


async def finish(
    conn: Conn,
    fence: Fence,
    state: str,
    reason: str,
    *,
    rest_state: str = "skipped",
    rest_error: str = "",
    data: dict[str, Any] | None = None,
) -> Settled:
    """The action's outcome; steps never reached get `rest_state`. `LeaseLost` if fenced out."""
    reason = storable(reason)
    await conn.execute(
        q("exec_steps_close_pending"),
        {"action_id": fence.action_id, "state": rest_state, "error": storable(rest_error)},
    )
    cur = await conn.execute(q("exec_finish"), {**fence.params(), "state": state, "reason": reason})
    row = await cur.fetchone()
    if row is None:
        raise LeaseLost(f"action {fence.action_id}: outcome of attempt {fence.attempt} refused")
    await event(
        conn,
        fence.action_id,
        fence.owner,
        "running",
        state,
        reason,
        {"attempt": fence.attempt, **(data or {})},
    )
    return Settled(fence.action_id, row["rule"], state, row["duration"])


async def interrupt(
    conn: Conn, action_id: int, attempt: int, why: str, actor: str, max_attempts: int
) -> Settled | None:
    """`running` -> `interrupted`, then per on_interrupt: back to `pending` or `failed`.

    Used by the sweeper (lease expired) and by an executor shutting down. A retry is refused
    when a step had already failed or was being undone (the action was unwinding), when a
    cancel was requested (-> cancelled), or after `max_attempts` claims.
    """
    why = storable(why)
    params = {"action_id": action_id, "why": why}
    cur = await conn.execute(q("exec_interrupt_action"), {**params, "attempt": attempt})
    row = await cur.fetchone()
    if row is None:
        return None
    await conn.execute(q("exec_interrupt_steps"), params)
    await conn.execute(q("exec_interrupt_undo"), params)
    await host_runs.interrupt_action(conn, action_id, why)
    await event(conn, action_id, actor, "running", "interrupted", why, {"attempt": attempt})
    rule = row["rule"]
    if row["cancel_requested"]:
        state, reason = "cancelled", f"cancel requested; interrupted: {why}"
    elif row["on_interrupt"] != "retry":
        state, reason = "failed", f"interrupted: {why} (on_interrupt: fail)"
    elif row["unwinding"]:
        state, reason = "failed", f"interrupted while unwinding a failure: {why}"
    elif row["attempt"] >= max_attempts:
        state, reason = "failed", f"interrupted {row['attempt']} times, not retrying: {why}"
    else:
        reason = f"retrying after interruption: {why}"
        await conn.execute(q("exec_requeue"), {"action_id": action_id, "reason": reason})
        await event(conn, action_id, actor, "interrupted", "pending", reason)
        await channels.notify(conn, channels.ACTIONS, action_id)
        return Settled(action_id, rule, "pending", None)
    cur = await conn.execute(
        q("exec_give_up"), {"action_id": action_id, "state": state, "reason": reason}
    )
    done = await cur.fetchone()
    await conn.execute(
        q("exec_steps_close_pending"),
        {"action_id": action_id, "state": "skipped", "error": "not run: " + reason},
    )
    await event(conn, action_id, actor, "interrupted", state, reason)
    return Settled(action_id, rule, state, done["duration"] if done else None)


async def sweep_expired(conn: Conn, actor: str, max_attempts: int) -> list[Settled]:
    """Every running action whose lease expired is interrupted (see `interrupt`)."""
    cur = await conn.execute(q("exec_expired_leases"))
    out = []
    for row in await cur.fetchall():
        why = f"the lease of {row['lease_owner']} expired (the executor stopped renewing it)"
        settled = await interrupt(conn, row["id"], row["attempt"], why, actor, max_attempts)
        if settled is not None:
            out.append(settled)
    return out


async def expire_approvals(conn: Conn, approval_timeout: float, actor: str) -> list[Settled]:
    """Actions awaiting approval past their deadline (or past `approval_timeout` when the
    action has none) become `cancelled`."""
    cur = await conn.execute(q("exec_expire_approvals"), {"timeout": approval_timeout})
    out = []
    for row in await cur.fetchall():
        await conn.execute(
            q("exec_steps_close_pending"),
            {"action_id": row["id"], "state": "cancelled", "error": "not run: approval timed out"},
        )
        await event(conn, row["id"], actor, "awaiting_approval", "cancelled", "approval timed out")
        out.append(Settled(row["id"], row["rule"], "cancelled", None))
    return out


async def cancel_requested(conn: Conn, ids: Sequence[int]) -> set[int]:
    """Which of these running actions somebody asked to cancel."""
    cur = await conn.execute(q("exec_cancel_requested"), {"ids": list(ids)})
    return {row["id"] for row in await cur.fetchall()}
