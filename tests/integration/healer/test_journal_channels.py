"""The journal's notification channels are named once: the constants of
`healer.journal.channels` are what the journal's own functions notify and what the executor and
the log hub listen on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from healer.ingest import ingest
from healer.journal import channels
from healer.journal.ingest_writer import IngestWriter
from healer.journal.pool import open_pool
from healer.rules import load_rules
from healer.webhook import parse_notification
from tests.support.ingest_helpers import config_for, payload, upgraded

NOTIFIED = re.compile(r"pg_notify\(\s*'([^']*)'")


async def test_the_journal_functions_notify_only_the_named_channels(journal_dsn: str) -> None:
    """Every channel a function of the migrated journal notifies is one of the constants."""
    async with await psycopg.AsyncConnection.connect(journal_dsn) as conn:
        cur = await conn.execute(
            "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'"
        )
        sources = [row[0] for row in await cur.fetchall()]
    notified = {name for src in sources for name in NOTIFIED.findall(src)}
    assert notified == {channels.ACTIONS, channels.STATE}
    assert notified <= set(channels.ALL)


async def test_an_ingested_action_wakes_the_listeners_of_the_named_channels(
    journal_dsn: str, tmp_path: Path
) -> None:
    """A pending action from ingest reaches whoever listens on ACTIONS and STATE."""
    config = config_for(tmp_path, journal_dsn)
    await upgraded(journal_dsn)
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as listener:
        await channels.listen(listener, channels.ACTIONS, channels.STATE)
        pool = await open_pool(journal_dsn)
        writer = IngestWriter(pool)
        n, raw = parse_notification(json.dumps(payload("firing_stale_rows")).encode())
        try:
            result = await ingest(writer, n, raw, load_rules(config), config.healer)
        finally:
            await writer.close()
            await pool.close()
        [action] = result.actions
        heard: set[tuple[str, str]] = set()
        async for note in listener.notifies(timeout=5.0, stop_after=2):
            heard.add((note.channel, note.payload))
    assert heard == {(channels.ACTIONS, str(action.id)), (channels.STATE, str(action.id))}


async def test_an_unknown_channel_is_refused(journal_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        with pytest.raises(ValueError, match="not one of the journal's channels"):
            await channels.notify(conn, "taskmedic_typo", 1)
        with pytest.raises(ValueError, match="not one of the journal's channels"):
            await channels.listen(conn, "taskmedic_typo")
