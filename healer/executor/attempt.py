"""Running one claimed action: its steps in order, undo on failure, the outcome, all fenced.

The journal says exactly what happened. A step is `running` while it runs, then `succeeded`,
`failed` (with its error), `skipped` (dry run) or `cancelled`; steps after a failure are
`skipped` with the reason. When a step fails (or the action is cancelled) the completed steps
are unwound in reverse order: statements in a shared transaction are rolled back (`undone`,
by rollback); other steps run their declared `undo` (`undone`, or `undo_failed` with the undo's
error); a step without `undo` stays `succeeded`. Each undo records how and why in
`steps.result.undo`.

A run stops early for three reasons, strongest first: its lease was lost (it writes nothing
more: the journal belongs to whoever took over), the healer is shutting down past its grace
(the step is stopped and the action `interrupted`, then retried or failed per on_interrupt,
exactly as the sweeper would do after a crash, only sooner), or a cancel was requested (the
step is stopped, the completed steps are unwound, the action is `cancelled`).

A write the journal refuses (anything but a lost connection: a constraint, a trigger, a
permission) ends the attempt at once: the action is `failed` with the refusal as its reason and
nothing more is run or undone, so a step that ran is never run again by a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from exporter.base.errors import TaskmedicError
from exporter.checks import TraceSource
from exporter.config import Config
from healer.agents.dispatch import Agents
from healer.errors import JournalRefused, JournalUnavailable, LeaseLost
from healer.executor.lease import renew_lease
from healer.journal import executor as journal_executor
from healer.metrics import HealerMetrics
from healer.plan import Plan, PlanStep
from healer.steps import (
    CeleryApps,
    Sessions,
    StepContext,
    StepFailed,
    StepResult,
    run_step,
    run_undo,
)
from healer.steps.output_capture import JournalLogSink, StepOutput
from healer.steps.sql import CommitFailed

__all__ = ["MAX_ATTEMPTS", "ActionRun", "RunSettings", "count"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A retried action that keeps being interrupted (it kills its healer?) fails after this many.
MAX_ATTEMPTS = 3
_PRIORITY = ("lease_lost", "shutdown", "cancel")


@dataclass(frozen=True)
class RunSettings:
    """What every run of one executor shares."""

    journal: journal_executor.Journal
    config: Config
    metrics: HealerMetrics
    celery: CeleryApps
    owner: str
    lease: float
    dry_run: bool
    output_cap: int
    monitors: Mapping[str, TraceSource] | None = None
    agents: Agents | None = None


def count(metrics: HealerMetrics, settled: journal_executor.Settled) -> None:
    """Metrics of an action that reached a final state (a requeue is not an outcome)."""
    if settled.state == "pending":
        return
    metrics.actions_total.labels(settled.rule, settled.state).inc()
    if settled.duration is not None:
        metrics.action_duration.labels(settled.rule).observe(settled.duration)


class _Stopped(TaskmedicError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Refused(TaskmedicError):
    """A journal write was refused; `step` is (idx, state) of a step whose end it recorded."""

    def __init__(self, reason: str, step: tuple[int, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step


def _steps_list(idxs: Collection[int]) -> str:
    """Step numbers as people read them: the first step is 1 (the journal's idx is 0)."""
    return ", ".join(str(i + 1) for i in idxs)


class ActionRun:
    """One attempt at one action, from claim to outcome (or to losing it)."""

    def __init__(self, claim: journal_executor.Claim, settings: RunSettings) -> None:
        self.claim = claim
        self.s = settings
        self.fence = journal_executor.Fence(claim.id, claim.attempt, settings.owner)
        self._reasons: set[str] = set()
        self._changed = asyncio.Event()
        self._shared: dict[int, str] = {}  # step idx -> database of its open shared transaction
        self._plan: Plan | None = None
        self._dry = False
        self._sessions: Sessions | None = None
        if claim.cancel_requested:
            self.interrupt("cancel")

    def interrupt(self, reason: str) -> None:
        """Ask the run to stop: "cancel", "shutdown" or "lease_lost"."""
        self._reasons.add(reason)
        self._changed.set()

    async def run(self) -> None:
        renewer = asyncio.create_task(
            renew_lease(self.s.journal, self.fence, self.s.lease, self.interrupt),
            name=f"lease-{self.claim.id}",
        )
        try:
            try:
                await self._run_until_stopped()
            except _Refused as refused:
                await self._refused(refused)
        except (LeaseLost, JournalUnavailable) as exc:
            log.warning("action %s: %s; writing nothing more about it", self.claim.id, exc)
            self.interrupt("lease_lost")
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if self._sessions is not None:
                await self._sessions.rollback()

    async def _run_until_stopped(self) -> None:
        try:
            await self._run()
        except _Stopped as stop:
            if stop.reason == "shutdown":
                await self._interrupt_now()

    # -- the steps ------------------------------------------------------------------------

    def _load_plan(self) -> Plan | str:
        try:
            plan = Plan.model_validate(self.claim.plan)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return f"the stored plan is not valid ({where}: {first['msg']}); nothing was run"
        if plan.hash() != self.claim.plan_hash:
            return "the stored plan does not match its plan_hash; nothing was run"
        return plan

    async def _run(self) -> None:
        plan = self._load_plan()
        if isinstance(plan, str):
            await self._finish("failed", plan)
            return
        self._plan = plan
        self._dry = self.claim.dry_run or plan.dry_run or self.s.dry_run
        self._sessions = Sessions(
            self.s.config, shared=plan.transaction == "single" or self._dry, dry_run=self._dry
        )
        names = [(s.name, s.kind) for s in plan.steps]
        await self._write(
            "the step rows", lambda c: journal_executor.ensure_steps(c, self.claim.id, names)
        )
        rows = await self._write(
            "a read of the step rows", lambda c: journal_executor.step_rows(c, self.claim.id)
        )
        # A retry never re-runs a step recorded as done (an uncommitted shared one is not).
        done = {
            r["idx"]
            for r in rows
            if r["state"] == "succeeded" and r["result"].get("transaction") != "open"
        }
        completed: list[int] = []
        for idx, step in enumerate(plan.steps):
            if idx in done:
                completed.append(idx)
                continue
            reason = self._reason()
            if reason is not None:
                if reason != "cancel":
                    raise _Stopped(reason)
                await self._cancel(None, completed)
                return
            try:
                res = await self._step(idx, step)
            except StepFailed as exc:
                await self._fail(idx, step, exc, completed)
                return
            except _Stopped as stop:
                if stop.reason != "cancel":
                    raise
                await self._cancel(idx, completed)
                return
            if not res.skipped:
                completed.append(idx)
        await self._complete(completed, len(done))

    async def _step(self, idx: int, step: PlanStep) -> StepResult:
        await self._write(
            f"the start of step {idx + 1}",
            lambda c: journal_executor.step_started(c, self.fence, idx),
        )
        out = self._output(idx)
        try:
            async with out:
                res = await self._guarded(run_step(step, self._context(out, idx)))
        except StepFailed as exc:
            await self._step_done(idx, "failed", exc.result, str(exc), exc.exit_code, out.total)
            raise
        except _Stopped as stop:
            if stop.reason == "cancel":
                why = "stopped: the action was cancelled"
                await self._step_done(idx, "cancelled", {}, why, None, out.total)
            raise
        if res.result.get("transaction") == "open":
            self._shared[idx] = str(res.result["database"])
        state = "skipped" if res.skipped else "succeeded"
        await self._step_done(idx, state, res.result, "", res.exit_code, out.total)
        return res

    async def _step_done(
        self,
        idx: int,
        state: str,
        result: dict[str, Any],
        error: str,
        exit_code: int | None,
        output_bytes: int,
    ) -> None:
        assert self._plan is not None
        what = f"the end of step {idx + 1} {self._plan.steps[idx].name!r} ({state})"
        try:
            await self._write(
                what,
                lambda c: journal_executor.step_finished(
                    c,
                    self.fence,
                    idx,
                    state=state,
                    result=result,
                    error=error,
                    exit_code=exit_code,
                    output_bytes=output_bytes,
                ),
            )
        except _Refused as refused:
            raise _Refused(refused.reason, (idx, state)) from refused

    def _context(self, out: StepOutput, idx: int) -> StepContext:
        assert self._plan is not None
        assert self._sessions is not None
        agents = self.s.agents
        return StepContext(
            remote=agents.step(self.s.journal, self.fence, idx) if agents is not None else None,
            config=self.s.config,
            output=out,
            sessions=self._sessions,
            celery=self.s.celery,
            stdin=json.dumps(self._plan.alert).encode(),
            dry_run=self._dry,
            monitors=self.s.monitors,
        )

    def _output(self, idx: int, record_total: bool = True) -> StepOutput:
        return StepOutput(
            JournalLogSink(self.s.journal, self.fence, idx),
            cap=self.s.output_cap,
            record_total=record_total,
            on_error=lambda exc: self.interrupt("lease_lost"),
        )

    # -- outcomes -------------------------------------------------------------------------

    async def _complete(self, completed: list[int], earlier: int) -> None:
        """Every step ran: commit the shared transactions, then the outcome."""
        assert self._plan is not None
        assert self._sessions is not None
        shared = sorted(self._shared)
        if self._dry:
            await self._sessions.rollback()
            await self._finish("skipped", "dry run: nothing was changed")
            return
        try:
            await self._sessions.commit()
        except CommitFailed as exc:
            kept = [i for i in shared if self._shared[i] in exc.committed]
            lost = [i for i in shared if i not in kept]
            why = str(exc)
            await self._write(
                "the steps whose transaction committed",
                lambda c: journal_executor.steps_patch(
                    c, self.claim.id, kept, {"transaction": "committed"}
                ),
            )
            await self._write(
                "the steps rolled back",
                lambda c: journal_executor.undo_finished(
                    c, self.claim.id, lost, ok=True, undo={"by": "rollback", "why": why}
                ),
            )
            self._shared.clear()
            summary = await self._unwind([i for i in completed if i not in lost], why)
            await self._finish(
                "failed", _join(why, f"rolled back: steps {_steps_list(lost)}", summary)
            )
            return
        n = len(self._plan.steps)
        ran = f"{n} step{'' if n == 1 else 's'} succeeded" + (
            f" ({earlier} in an earlier attempt)" if earlier else ""
        )
        await self._finish("succeeded", ran, committed=shared)

    async def _fail(self, idx: int, step: PlanStep, exc: StepFailed, completed: list[int]) -> None:
        why = f"step {idx + 1} {step.name!r} failed: {exc}"
        summary = await self._unwind(completed, why)
        rest = f"not run: step {idx + 1} failed"
        await self._finish("failed", _join(why, summary), rest_error=rest)

    async def _cancel(self, idx: int | None, completed: list[int]) -> None:
        during = f" during step {idx + 1}" if idx is not None else ""
        summary = await self._unwind(completed, "the action was cancelled")
        await self._finish(
            "cancelled",
            _join(f"cancelled on request{during}", summary),
            rest_state="cancelled",
            rest_error="not run: the action was cancelled",
        )

    async def _unwind(self, completed: list[int], why: str) -> str:
        """Roll back shared transactions, then undo completed steps in reverse order."""
        assert self._plan is not None
        assert self._sessions is not None
        rolled = sorted(self._shared)
        await self._sessions.rollback()
        self._shared.clear()
        if rolled:
            await self._write(
                "the steps rolled back",
                lambda c: journal_executor.undo_finished(
                    c, self.claim.id, rolled, ok=True, undo={"by": "rollback", "why": why}
                ),
            )
        undone, failed = list(reversed(rolled)), list[int]()
        for idx in reversed(completed):
            step = self._plan.steps[idx]
            if idx in rolled or step.undo is None or self._dry:
                continue
            (undone if await self._undo(idx, step, why) else failed).append(idx)
        parts = []
        if undone:
            parts.append(f"undone: steps {_steps_list(undone)}")
        if failed:
            parts.append(f"undo failed: steps {_steps_list(failed)}")
        return "; ".join(parts)

    async def _undo(self, idx: int, step: PlanStep, why: str) -> bool:
        assert step.undo is not None
        how = "script" if step.undo.script is not None else "sql"
        await self._write(
            f"the start of the undo of step {idx + 1}",
            lambda c: journal_executor.undo_started(c, self.claim.id, idx),
        )
        out = self._output(idx, record_total=False)
        try:
            async with out:
                out.system(f"undo of step {idx + 1} {step.name!r} ({how}): {why}")
                # A cancel arriving now is already being honoured by this unwinding.
                res = await self._guarded(
                    run_undo(step.undo, self._context(out, idx), step.on), {"cancel"}
                )
        except StepFailed as exc:
            undo = {"by": how, "why": why, "result": exc.result}
            error = str(exc)
            await self._write(
                f"the undo of step {idx + 1}",
                lambda c: journal_executor.undo_finished(
                    c, self.claim.id, [idx], ok=False, undo=undo, error=error
                ),
            )
            return False
        undo = {"by": how, "why": why, "result": res.result}
        await self._write(
            f"the undo of step {idx + 1}",
            lambda c: journal_executor.undo_finished(c, self.claim.id, [idx], ok=True, undo=undo),
        )
        return True

    async def _finish(
        self,
        state: str,
        reason: str,
        *,
        rest_state: str = "skipped",
        rest_error: str = "",
        committed: list[int] | None = None,
    ) -> None:
        async def write(c: journal_executor.Conn) -> journal_executor.Settled:
            if committed:
                await journal_executor.steps_patch(
                    c, self.claim.id, committed, {"transaction": "committed"}
                )
            return await journal_executor.finish(
                c, self.fence, state, reason, rest_state=rest_state, rest_error=rest_error or reason
            )

        self._shared.clear()
        count(self.s.metrics, await self._write(f"the outcome ({state})", write))

    async def _refused(self, refused: _Refused) -> None:
        """The journal refused a write: end the attempt `failed`, naming the refusal.

        Retrying would meet the same refusal, and a step that ran must never run again, so
        nothing more is run or undone: shared transactions are rolled back, the step whose end
        was refused keeps the state it reached (its result replaced by the refusal), the action
        fails. If even that is refused, the outcome alone is written; the sweeper is the last
        resort only when the journal refuses that too.
        """
        log.error("action %s: %s", self.claim.id, refused.reason)
        if self._sessions is not None:
            await self._sessions.rollback()
        rolled = sorted(self._shared)
        self._shared.clear()
        why = f"{refused.reason}; nothing more was run or undone"
        note = {"journal_error": refused.reason}

        async def record(c: journal_executor.Conn) -> journal_executor.Settled:
            if refused.step is not None:
                idx, state = refused.step
                error = refused.reason if state != "succeeded" else ""
                await journal_executor.step_finished(
                    c, self.fence, idx, state=state, result=note, error=error
                )
            if rolled:
                undo = {"by": "rollback", "why": why}
                await journal_executor.undo_finished(c, self.claim.id, rolled, ok=True, undo=undo)
            return await journal_executor.finish(
                c, self.fence, "failed", why, rest_error=f"not run: {why}"
            )

        async def outcome_only(c: journal_executor.Conn) -> journal_executor.Settled:
            return await journal_executor.finish(c, self.fence, "failed", why)

        for write in (record, outcome_only):
            try:
                settled = await self.s.journal.run(write, fence=self.fence)
            except JournalRefused:
                log.exception("action %s: the journal refused its failure too", self.claim.id)
            else:
                count(self.s.metrics, settled)
                return

    async def _interrupt_now(self) -> None:
        """Shutdown past its grace: what the sweeper does after a crash, without the wait."""
        if self._sessions is not None:
            await self._sessions.rollback()
        why = f"the healer {self.s.owner} stopped before the action finished"
        settled = await self._write(
            "the interruption",
            lambda c: journal_executor.interrupt(
                c, self.claim.id, self.claim.attempt, why, self.s.owner, MAX_ATTEMPTS
            ),
        )
        if settled is not None:
            count(self.s.metrics, settled)

    # -- plumbing -------------------------------------------------------------------------

    async def _write(self, what: str, fn: Callable[[journal_executor.Conn], Awaitable[T]]) -> T:
        """One fenced journal transaction; `what` names it if the journal refuses it."""
        try:
            return await self.s.journal.run(fn, fence=self.fence)
        except JournalRefused as exc:
            raise _Refused(f"the journal refused {what}: {exc}") from exc

    def _reason(self, ignore: Collection[str] = ()) -> str | None:
        for reason in _PRIORITY:
            if reason in self._reasons and reason not in ignore:
                return reason
        return None

    async def _guarded(self, coro: Awaitable[T], ignore: Collection[str] = ()) -> T:
        """Await `coro`, stopping it (cancellation) when the run is asked to stop."""
        task = asyncio.ensure_future(coro)
        while not task.done():
            reason = self._reason(ignore)
            if reason is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StepFailed):
                    await task
                raise _Stopped(reason)
            self._changed.clear()
            waiter = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        return task.result()


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
