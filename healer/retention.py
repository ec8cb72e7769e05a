"""Log retention: delete log chunks older than `healer.log_retention` and empty the raw
webhook payloads as old; keep everything else.

Output and payloads are the bulk of the journal; alerts (labels and annotations included),
actions, steps and events are the audit trail and stay. The journal prunes in short batches
(`healer.journal.retention`). `taskmedic journal prune` runs it once; a running healer runs it
every hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from healer import appkeys
from healer.errors import JournalUnavailable
from healer.journal.pool import journal_errors
from healer.journal.retention import PruneReport, prune_logs
from healer.supervise import supervise

__all__ = ["DEFAULT_RETENTION", "PruneReport", "prune_logs", "run_periodic", "setup"]

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 30 * 86400.0
PRUNE_EVERY = 3600.0


def retention_of(config: Any) -> float:
    """`healer.log_retention` in seconds (30 days when the config does not say)."""
    settings = getattr(config, "healer", None)
    value = getattr(settings, "log_retention", None)
    return DEFAULT_RETENTION if value is None else float(value)


async def run_periodic(
    pool: Callable[[], AsyncConnectionPool[Any]],
    retention: float,
    *,
    every: float = PRUNE_EVERY,
    first_delay: float = 60.0,
) -> None:
    """Prune every `every` seconds until cancelled; a journal outage only skips a round."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            with journal_errors("log retention"):
                async with pool().connection() as conn:
                    report = await prune_logs(conn, retention, actor="healer (log_retention)")
            if report.anything:
                log.info("log retention: %s", report.summary())
        except JournalUnavailable as e:
            log.warning("log retention: journal unavailable (%s); next try in %.0fs", e, every)
        await asyncio.sleep(every)


def setup(app: web.Application) -> None:
    """Run the hourly prune while the app runs (`log_retention: 0` turns it off)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        retention = retention_of(app.get(appkeys.CONFIG))
        metrics = app.get(appkeys.METRICS)
        task = None
        if retention > 0 and appkeys.JOURNAL_POOL in app:
            task = asyncio.create_task(
                supervise(
                    "log-retention",
                    partial(run_periodic, lambda: app[appkeys.JOURNAL_POOL], retention),
                    metrics.loops if metrics is not None else None,
                ),
                name="taskmedic-log-retention",
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(ctx)
