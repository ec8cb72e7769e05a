"""The exporter's checks, and `run_once`, which runs one of them now.

`run_once` is what `taskmedic check` and the healer's `repair` step call: it needs no web
server and no background runner, opens what it needs and closes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from exporter.checks.base import (
    Check,
    CheckContext,
    CheckOutcome,
    CheckSpec,
    Finding,
    TraceSource,
)
from exporter.checks.orphan_rows import OrphanRows
from exporter.checks.orphan_tasks import OrphanTasks
from exporter.checks.stale_status import StaleStatus
from exporter.config import Config, OrphanRowsCheck, OrphanTasksCheck
from exporter.databases import Databases
from exporter.errors import CheckUnknown

__all__ = [
    "Check",
    "CheckContext",
    "CheckOutcome",
    "Finding",
    "TraceSource",
    "build_check",
    "run_once",
]

# The moment between the two observations of an orphan check in `run_once`: long enough for a
# task just sent to reach its queue or worker, short enough for an operator at a terminal.
SECOND_LOOK_AFTER = 1.0


def build_check(spec: CheckSpec, config: Config) -> Check:
    """The check object for one configured check."""
    if isinstance(spec, OrphanTasksCheck):
        return OrphanTasks(spec, config)
    if isinstance(spec, OrphanRowsCheck):
        return OrphanRows(spec, config)
    return StaleStatus(spec, config)


async def run_once(
    config: Config,
    check_name: str,
    monitors: Mapping[str, TraceSource] | None = None,
    *,
    pause: float = SECOND_LOOK_AFTER,
) -> CheckOutcome:
    """Run one check now and return its confirmed findings; raise CheckUnknown when blind.

    Grace applies as always; an orphan check observes twice, `pause` seconds apart, and
    reports the rows found both times. Without `monitors`, the cluster an orphan_tasks check
    needs is reached through a temporary `ClusterMonitor` (task lookups need no event stream).
    """
    try:
        spec = config.check(check_name)
    except KeyError:
        raise CheckUnknown(f"no check named {check_name!r} in the config") from None
    check = build_check(spec, config)
    databases = Databases(config.databases)
    try:
        async with _monitors_for(config, spec, monitors) as available:
            ctx = CheckContext(databases, available)
            outcome = await check.collect(ctx)
            if not outcome.confirmed:
                await asyncio.sleep(pause)
                outcome = await check.collect(ctx)
            return outcome
    finally:
        databases.close()


@contextlib.asynccontextmanager
async def _monitors_for(
    config: Config, spec: CheckSpec, given: Mapping[str, TraceSource] | None
) -> AsyncIterator[Mapping[str, TraceSource]]:
    if given is not None or not isinstance(spec, OrphanTasksCheck):
        yield given or {}
        return
    from exporter.celery_state import ClusterMonitor

    cluster = spec.celery
    monitor = await asyncio.to_thread(ClusterMonitor, cluster, config.celery[cluster])
    try:
        yield {cluster: monitor}
    finally:
        await asyncio.to_thread(monitor.stop)
