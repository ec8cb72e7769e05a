"""Log retention: delete log chunks older than `healer.log_retention`, keep everything else.

Output is the bulk of the journal; alerts, actions, steps and events are the audit trail and
stay. Chunks go in batches, each its own short transaction, so a prune never holds a long lock
on a journal that executors are writing to. `taskmedic journal prune` runs it once; a running
healer runs it every hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from aiohttp import web
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from healer import appkeys
from healer.errors import JournalUnavailable
from healer.journal.pool import journal_errors
from healer.journal.queries import q

__all__ = ["DEFAULT_RETENTION", "PruneReport", "prune_logs", "run_periodic", "setup"]

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 30 * 86400.0
PRUNE_EVERY = 3600.0


@dataclass
class PruneReport:
    """What a prune removed, or with `dry_run` would remove."""

    cutoff: datetime
    dry_run: bool
    chunks: int = 0
    bytes: int = 0
    actions: set[int] | int = field(default=0)

    @property
    def action_count(self) -> int:
        return self.actions if isinstance(self.actions, int) else len(self.actions)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.chunks} log chunks ({self.bytes} bytes) of {self.action_count} "
            f"actions older than {self.cutoff.isoformat(timespec='seconds')}"
        )


async def prune_logs(
    conn: psycopg.AsyncConnection[Any],
    older_than: float,
    *,
    dry_run: bool = False,
    batch: int = 5000,
    actor: str = "taskmedic journal prune",
) -> PruneReport:
    """Delete (or with `dry_run` only count) the log chunks older than `older_than` seconds."""
    if older_than < 0:
        raise ValueError("older_than cannot be negative")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    async with conn.transaction():
        cur = await conn.execute(q("prune_cutoff"), {"seconds": older_than})
        row = await cur.fetchone()
        assert row is not None
        cutoff: datetime = row[0]
        if dry_run:
            cur = await conn.execute(q("prune_log_count"), {"cutoff": cutoff})
            counts = await cur.fetchone()
            assert counts is not None
            return PruneReport(cutoff, True, int(counts[0]), int(counts[1]), int(counts[2]))
    report = PruneReport(cutoff, False, actions=set())
    assert isinstance(report.actions, set)
    while True:
        async with conn.transaction():
            cur = await conn.execute(q("prune_log_batch"), {"cutoff": cutoff, "batch": batch})
            got = await cur.fetchone()
        assert got is not None
        report.chunks += int(got[0])
        report.bytes += int(got[1])
        report.actions.update(got[2])
        if int(got[0]) < batch:
            break
    if report.chunks:
        async with conn.transaction():
            await conn.execute(
                q("prune_log_event"),
                {
                    "actor": actor,
                    "message": report.summary(),
                    "data": Jsonb(
                        {
                            "cutoff": cutoff.isoformat(),
                            "chunks": report.chunks,
                            "bytes": report.bytes,
                            "actions": report.action_count,
                        }
                    ),
                },
            )
    return report


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
            if report.chunks:
                log.info("log retention: %s", report.summary())
        except JournalUnavailable as e:
            log.warning("log retention: journal unavailable (%s); next try in %.0fs", e, every)
        await asyncio.sleep(every)


def setup(app: web.Application) -> None:
    """Run the hourly prune while the app runs (`log_retention: 0` turns it off)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        retention = retention_of(app.get(appkeys.CONFIG))
        task = None
        if retention > 0 and appkeys.JOURNAL_POOL in app:
            task = asyncio.create_task(
                run_periodic(lambda: app[appkeys.JOURNAL_POOL], retention),
                name="taskmedic-log-retention",
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(ctx)
