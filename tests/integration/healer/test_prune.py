"""Log retention: old log chunks go, the audit trail (alerts, actions, steps, events) stays."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from healer.retention import prune_logs, run_periodic
from tests.support.log_helpers import append_chunk, create_action, make_app

DAY = 86400.0


async def counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    out = {}
    for table in ("notifications", "alerts", "actions", "steps", "events", "log_chunks"):
        cur = await conn.execute(f"SELECT count(*) FROM {table}")
        row = await cur.fetchone()
        assert row is not None
        out[table] = int(row[0])
    return out


async def old_and_new(conn: psycopg.AsyncConnection[Any]) -> tuple[list[int], list[int]]:
    """Two actions 40 days old with 7 chunks, one of today with 2 (plus one old chunk)."""
    now = datetime.now(UTC)
    old_at = now - timedelta(days=40)
    old_ids, new_ids = [], []
    for _ in range(2):
        aid = await create_action(conn, state="succeeded", created_at=old_at)
        old_ids += [await append_chunk(conn, aid, b"x" * 10, at=old_at) for _ in range(3)]
    recent = await create_action(conn, state="running")
    # A chunk stamped 31 days ago on a recent action is old too: retention is per chunk.
    old_ids.append(await append_chunk(conn, recent, b"y" * 5, at=now - timedelta(days=31)))
    new_ids += [await append_chunk(conn, recent, b"fresh\n") for _ in range(2)]
    return old_ids, new_ids


async def chunk_ids(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    cur = await conn.execute("SELECT id FROM log_chunks ORDER BY id")
    return [r[0] for r in await cur.fetchall()]


async def test_prune_deletes_only_chunks_older_than_the_retention_in_batches(
    journal_conn: psycopg.AsyncConnection[Any],
) -> None:
    """Chunks older than 30 days go (3 at a time here); every other row is kept."""
    old, new = await old_and_new(journal_conn)
    before = await counts(journal_conn)
    report = await prune_logs(journal_conn, 30 * DAY, batch=3)
    assert (report.chunks, report.bytes, report.action_count) == (7, 65, 3)
    assert not report.dry_run
    assert await chunk_ids(journal_conn) == new
    after = await counts(journal_conn)
    assert after["log_chunks"] == before["log_chunks"] - len(old)
    for table in ("notifications", "alerts", "actions", "steps"):
        assert after[table] == before[table], table
    # The audit trail says when output disappeared and how much.
    cur = await journal_conn.execute(
        "SELECT action_id, kind, data->>'chunks' FROM events WHERE kind = 'log_pruned'"
    )
    assert await cur.fetchall() == [(None, "log_pruned", "7")]
    assert after["events"] == before["events"] + 1
    again = await prune_logs(journal_conn, 30 * DAY)
    assert again.chunks == 0
    assert (await counts(journal_conn))["events"] == after["events"]  # nothing pruned, no event


async def test_webhook_payloads_past_the_retention_are_emptied_and_their_alerts_kept(
    journal_conn: psycopg.AsyncConnection[Any],
) -> None:
    """A notification's raw body is the bulk of what ingest stores: past the retention it
    becomes `{}`, while the notification row and its alerts (labels, annotations) stay."""
    await create_action(journal_conn)  # a notification of today
    old = await create_action(journal_conn)
    await journal_conn.execute(
        "UPDATE notifications SET received_at = now() - interval '40 days', payload = %s "
        "WHERE id = (SELECT notification_id FROM alerts a JOIN actions x ON x.alert_id = a.id "
        "WHERE x.id = %s)",
        (Jsonb({"version": "4", "alerts": [{"labels": {"big": "x" * 5000}}]}), old),
    )
    before = await counts(journal_conn)
    dry = await prune_logs(journal_conn, 30 * DAY, dry_run=True)
    assert dry.payloads == 1
    assert dry.payload_bytes > 5000
    report = await prune_logs(journal_conn, 30 * DAY, batch=1)
    assert (report.payloads, report.payload_bytes) == (1, dry.payload_bytes)
    cur = await journal_conn.execute(
        "SELECT payload = '{}'::jsonb FROM notifications ORDER BY received_at"
    )
    assert [r[0] for r in await cur.fetchall()] == [True, False]
    after = await counts(journal_conn)
    for table in ("notifications", "alerts", "actions", "steps"):
        assert after[table] == before[table], table
    cur = await journal_conn.execute(
        "SELECT data->>'payloads' FROM events WHERE kind = 'log_pruned'"
    )
    assert await cur.fetchall() == [("1",)]
    assert (await prune_logs(journal_conn, 30 * DAY)).payloads == 0


async def test_dry_run_reports_counts_and_removes_nothing(
    journal_conn: psycopg.AsyncConnection[Any],
) -> None:
    """--dry-run says what would go and changes no row."""
    old, new = await old_and_new(journal_conn)
    before = await counts(journal_conn)
    report = await prune_logs(journal_conn, 30 * DAY, dry_run=True)
    assert report.dry_run
    assert (report.chunks, report.bytes, report.action_count) == (len(old), 65, 3)
    assert "would delete 7 log chunks (65 bytes) of 3 actions" in report.summary()
    assert await counts(journal_conn) == before
    assert await chunk_ids(journal_conn) == sorted(old + new)


async def test_prune_refuses_a_negative_age(journal_conn: psycopg.AsyncConnection[Any]) -> None:
    with pytest.raises(ValueError, match="negative"):
        await prune_logs(journal_conn, -1)


async def test_running_healer_prunes_periodically(
    journal_dsn: str, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """The healer's background prune removes old chunks without anyone running the CLI."""
    _old, new = await old_and_new(journal_conn)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(journal_dsn, min_size=1, open=False)
    await pool.open()
    task = asyncio.create_task(run_periodic(lambda: pool, 30 * DAY, every=0.05, first_delay=0))
    try:
        async with asyncio.timeout(10):
            while await chunk_ids(journal_conn) != new:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()


async def test_the_healer_app_runs_the_periodic_prune_while_it_serves(
    journal_dsn: str,
    journal_conn: psycopg.AsyncConnection[Any],
    aiohttp_client: Any,
) -> None:
    """create_app wires the hourly prune (healer.log_retention) into the running app."""
    await aiohttp_client(make_app(journal_dsn, auth=True))
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "taskmedic-log-retention" in names
