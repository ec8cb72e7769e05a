"""`orphan_tasks`: rows `(key, task_id[, since])` that claim a Celery task is running.

Timesketch-style timelines stay `processing` for ever when the worker running their import
was killed. A row is an orphan when it is past `grace`, its task is on no live worker (active,
reserved or scheduled), not waiting in a broker queue that can be peeked, and this held on two
consecutive observations. Reasons: `lost` (no trace anywhere, or the row has no task id at
all) and `finished` (the result backend has a final state but the row still claims to run).
A task whose whereabouts cannot be told (an unreadable queue holds messages, or a live worker
did not answer inspect in time) is no finding, so nothing repairs it, but it is exported under
its own reason, `unknown`, so that "cannot tell" never reads as 0. Only rows past grace are
looked up in the cluster, so the Celery round trip grows with the suspects, not with the table.

A cluster whose broker is down makes the check unknown: its task lookup raises CheckUnknown,
and in the exporter (which follows the event stream) a broker seen down does so even when no
row needs a lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from exporter.celery_state import TaskMatch, TaskTrace
from exporter.checks.base import (
    Check,
    CheckContext,
    CheckOutcome,
    Finding,
    Observations,
    TraceSource,
    identity,
    to_utc,
)
from exporter.config import Config, OrphanTasksCheck
from exporter.databases import discard_result, in_daemon_thread
from exporter.errors import CheckUnknown

__all__ = ["OrphanTasks"]

_ORPHAN = {str(TaskTrace.LOST): "lost", str(TaskTrace.FINISHED): "finished"}
REASONS = ("lost", "finished", "unknown")


class OrphanTasks(Check):
    spec: OrphanTasksCheck

    def __init__(self, spec: OrphanTasksCheck, config: Config) -> None:
        super().__init__(spec, config)
        self.observations = Observations(spec.grace)
        inspect_timeout = config.celery[spec.celery].inspect_timeout
        self._min_trace_budget = 2 * inspect_timeout + 1.0
        if spec.match is not None:
            # Three inspect broadcasts run at once, each on a connection of its own.
            self._min_trace_budget += 1.0

    async def collect(self, ctx: CheckContext) -> CheckOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        monitor = ctx.monitors.get(self.spec.celery)
        if monitor is None:
            raise CheckUnknown(f"celery cluster {self.spec.celery!r} is not monitored")
        result = await self.query(ctx, (2, 3))
        seen: set[Hashable] = set()
        suspects: list[tuple[Hashable, Finding]] = []
        for row in result.rows:
            key, raw_id = row[0], row[1]
            task_id = str(raw_id) if raw_id is not None and str(raw_id) != "" else None
            since = to_utc(row[2]) if len(row) > 2 else None
            ident = identity(key, task_id)
            age = self.observations.age(ident, result.now, since, seen)
            if age >= self.spec.grace:
                suspects.append((ident, Finding(key, task_id, since, age, None)))
        if ctx.broker_up is not None and not ctx.broker_up(self.spec.celery):
            raise CheckUnknown(f"celery cluster {self.spec.celery!r}: broker unreachable")
        ids = sorted({f.task_id for _, f in suspects if f.task_id is not None})
        traces = await self._traces(monitor, ids, deadline - loop.time()) if ids else {}
        # Without a task id (spec.match), the second column is the argument value: `task_id`
        # of a finding then holds that value, and only "lost" is possible.
        candidates: dict[Hashable, Finding] = {}
        unknown = 0
        for ident, f in suspects:
            if f.task_id is not None and str(traces.get(f.task_id)) == TaskTrace.UNKNOWN:
                unknown += 1
                continue
            reason = "lost" if f.task_id is None else _ORPHAN.get(str(traces.get(f.task_id)))
            if reason is not None:
                candidates[ident] = Finding(f.key, f.task_id, f.since, f.age_seconds, reason)
        findings, confirmed = self.observations.settle(seen, candidates)
        findings.sort(key=lambda f: -f.age_seconds)
        oldest = findings[0].age_seconds if findings else 0.0
        return CheckOutcome(
            self.name,
            self.spec.type,
            findings,
            len(result.rows),
            oldest,
            result.now,
            confirmed,
            unknown=unknown,
        )

    async def _traces(
        self, monitor: TraceSource, ids: list[str], remaining: float
    ) -> dict[str, str]:
        budget = max(remaining, self._min_trace_budget)
        match = self.spec.match
        try:
            if match is None:
                call = in_daemon_thread(monitor.task_traces, ids)
            else:
                by = TaskMatch(frozenset(match.tasks), match.position, match.keyword)
                call = in_daemon_thread(monitor.task_traces_by_argument, by, ids)
            traces = await asyncio.wait_for(asyncio.shield(call), budget)
        except asyncio.CancelledError:
            call.add_done_callback(discard_result)
            raise
        except TimeoutError:
            call.add_done_callback(discard_result)
            raise CheckUnknown(
                f"celery cluster {self.spec.celery!r} did not say where {len(ids)} tasks are "
                f"within {budget:g}s"
            ) from None
        return {k: str(v) for k, v in traces.items()}

    def reset(self) -> None:
        self.observations.reset()
