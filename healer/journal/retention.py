"""Log retention in the journal: log chunks older than a cutoff are deleted in batches, and
the raw webhook payloads older than it are emptied (`{}`) the same way.

Alerts (with their labels and annotations), actions, steps (with their true output byte counts)
and events are the audit trail and stay; so does each notification's row, without its body.
Each batch is its own short transaction, so a prune never holds a long lock on a journal that
executors are writing to, and SKIP LOCKED lets two replicas prune side by side. One event row
says when and why output disappeared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from healer.journal.queries import q

__all__ = ["PruneReport", "prune_logs"]


@dataclass
class PruneReport:
    """What a prune removed, or with `dry_run` would remove."""

    cutoff: datetime
    dry_run: bool
    chunks: int = 0
    bytes: int = 0
    actions: set[int] | int = field(default=0)
    payloads: int = 0  # webhook payloads emptied
    payload_bytes: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.chunks or self.payloads)

    @property
    def action_count(self) -> int:
        return self.actions if isinstance(self.actions, int) else len(self.actions)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.chunks} log chunks ({self.bytes} bytes) of {self.action_count} "
            f"actions and {self.payloads} webhook payloads ({self.payload_bytes} bytes) older "
            f"than {self.cutoff.isoformat(timespec='seconds')}"
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
            cur = await conn.execute(q("prune_payload_count"), {"cutoff": cutoff})
            payloads = await cur.fetchone()
            assert payloads is not None
            return PruneReport(
                cutoff,
                True,
                int(counts[0]),
                int(counts[1]),
                int(counts[2]),
                int(payloads[0]),
                int(payloads[1]),
            )
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
    while True:
        async with conn.transaction():
            cur = await conn.execute(q("prune_payload_batch"), {"cutoff": cutoff, "batch": batch})
            got = await cur.fetchone()
        assert got is not None
        report.payloads += int(got[0])
        report.payload_bytes += int(got[1])
        if int(got[0]) < batch:
            break
    if report.anything:
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
                            "payloads": report.payloads,
                            "payload_bytes": report.payload_bytes,
                        }
                    ),
                },
            )
    return report
