"""The step kinds of a plan (script, sql, celery, repair, http, verify) and the dispatch.

A step function returns a `StepResult` (what the journal records in `steps.result`) or raises
`StepFailed` with the message the journal records as the step's error. Cancellation (a cancel
request, a lost lease, shutdown) arrives as `asyncio.CancelledError`; each kind stops what it
started (a script's process group, a query) before letting it through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.checks import TraceSource
from exporter.config import Config
from healer.errors import StepFailed
from healer.plan import HostsSpec, PlanStep, UndoSpec
from healer.steps.celery import CeleryApps, run_celery
from healer.steps.http import run_http
from healer.steps.output_capture import StepOutput
from healer.steps.repair import run_repair
from healer.steps.result import StepResult
from healer.steps.script import run_script
from healer.steps.sql import Sessions, run_sql
from healer.steps.verify import run_verify

if TYPE_CHECKING:
    from healer.agents.dispatch import RemoteStep

__all__ = [
    "CeleryApps",
    "Sessions",
    "StepContext",
    "StepFailed",
    "StepResult",
    "run_step",
    "run_undo",
]


@dataclass
class StepContext:
    """What a step may use: the config, its output, the action's database sessions."""

    config: Config
    output: StepOutput
    sessions: Sessions
    celery: CeleryApps
    stdin: bytes  # the alert as JSON, unless a script declares its own stdin
    dry_run: bool = False
    monitors: Mapping[str, TraceSource] | None = field(default=None)
    remote: RemoteStep | None = None  # runs a step on other hosts (agents configured)


def _remote(ctx: StepContext) -> RemoteStep:
    if ctx.remote is None:
        raise StepFailed("this step runs on other hosts, and the config has no agents: section")
    return ctx.remote


def _skipped(what: str) -> StepResult:
    return StepResult({"dry_run": True, "not_run": f"dry run: {what} not run"}, skipped=True)


async def run_step(step: PlanStep, ctx: StepContext) -> StepResult:
    """Run one plan step; in dry run scripts, tasks, requests and verifications are skipped,
    SQL is rolled back."""
    if step.kind == "script" and step.script is not None:
        if ctx.dry_run:
            where = f" on {', '.join(step.on.hosts)}" if step.on is not None else ""
            return _skipped(f"script{where}")
        stdin = step.script.stdin.encode() if step.script.stdin else ctx.stdin
        if step.on is not None:
            return await _remote(ctx).run(step.script, step.on, stdin, ctx.output)
        return await run_script(step.script, stdin, ctx.output)
    if step.kind == "sql" and step.sql is not None:
        return await run_sql(step.sql, ctx.sessions, ctx.output)
    if step.kind == "celery" and step.celery is not None:
        if ctx.dry_run:
            return _skipped("celery task")
        return await run_celery(step.celery, ctx.celery, ctx.output)
    if step.kind == "repair" and step.repair is not None:
        return await run_repair(step.repair, ctx.config, ctx.sessions, ctx.output, ctx.monitors)
    if step.kind == "http" and step.http is not None:
        if ctx.dry_run:
            return _skipped("http request")
        return await run_http(step.http, ctx.output)
    if step.kind == "verify" and step.verify is not None:
        if ctx.dry_run:
            return _skipped("verification (nothing was changed)")
        return await run_verify(step.verify, ctx.config, ctx.output)
    raise StepFailed(f"the plan's {step.kind} step {step.name!r} has no {step.kind} spec")


async def run_undo(undo: UndoSpec, ctx: StepContext, on: HostsSpec | None = None) -> StepResult:
    """Run the undo of a completed step: a script (on the hosts where the step ran, for a
    step on other hosts), or SQL in a transaction of its own."""
    if undo.script is not None:
        stdin = undo.script.stdin.encode() if undo.script.stdin else ctx.stdin
        if on is not None:
            return await _remote(ctx).undo(undo.script, on, stdin, ctx.output)
        return await run_script(undo.script, stdin, ctx.output)
    if undo.sql is not None:
        return await run_sql(undo.sql, ctx.sessions, ctx.output, own_transaction=True)
    raise StepFailed("undo declares neither script nor sql")
