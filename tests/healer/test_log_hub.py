"""The log hub: one shared journal query per chunk, whatever the number of followers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from healer.log_hub import ActionNotFound, Chunk, End, LogHub
from tests.healer.log_helpers import append_chunk, create_action, set_state

APP_NAME = "taskmedic-hub-test"


async def until(pred: Any, timeout: float = 10.0, what: str = "") -> None:
    """Await a condition with a deadline (the async twin of tests.services.wait_for)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@pytest.fixture
async def pool(pg_dsn: str, journal: Any) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_dsn, min_size=1, max_size=4, open=False, kwargs={"application_name": APP_NAME}
    )
    await p.open()
    yield p
    await p.close()


class Follower:
    """Collects what `hub.follow` yields; `gate` (when given) holds it like a slow client."""

    def __init__(self, hub: LogHub, action_id: int, gate: asyncio.Event | None = None) -> None:
        self.chunks: list[Chunk] = []
        self.end: End | None = None
        self.gate = gate
        self.task = asyncio.create_task(self._run(hub, action_id))

    async def _run(self, hub: LogHub, action_id: int) -> None:
        async for item in hub.follow(action_id):
            if isinstance(item, End):
                self.end = item
                return
            self.chunks.append(item)
            if self.gate is not None:
                await self.gate.wait()


async def log_chunk_scans(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many times PostgreSQL scanned log_chunks (any plan), from its own statistics."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    cur = await conn.execute(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
        " WHERE relname = 'log_chunks'"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_fifty_followers_cost_the_journal_one_query_per_chunk(
    pg_dsn: str, journal: psycopg.AsyncConnection[Any]
) -> None:
    """50 followers of one action: each chunk is read once for all of them, not 50 times.

    Counted twice: by the hub, and by PostgreSQL's own table statistics (which the hub cannot
    fake), once the hub's connections have closed and flushed them.
    """
    aid = await create_action(journal)
    scans_before = await log_chunk_scans(journal)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_dsn, min_size=1, max_size=4, open=False, kwargs={"application_name": APP_NAME}
    )
    await pool.open()
    hub = LogHub(pg_dsn, pool, poll_interval=3600)
    followers = [Follower(hub, aid) for _ in range(50)]
    await until(lambda: hub.stats.catchup_queries == 50 and hub.listening.is_set())

    n = 20
    for i in range(n):
        await append_chunk(journal, aid, f"line {i}\n")
        await until(lambda i=i: all(len(f.chunks) == i + 1 for f in followers))
    await set_state(journal, aid, "succeeded")
    await asyncio.gather(*(f.task for f in followers))
    for f in followers:
        assert [c.data for c in f.chunks] == [f"line {i}\n".encode() for i in range(n)]
        assert f.end == End("succeeded")

    # One read per notification (n chunks + the state change that ended the stream), plus the
    # one read every (re)connect of the listener makes in case it missed a notification.
    assert hub.stats.notifications == n + 1
    assert hub.stats.feed_queries <= n + 1 + hub.stats.listen_connects
    assert hub.stats.init_queries == 1
    await hub.stop()
    await pool.close()

    async def hub_connections_gone() -> None:
        while True:
            cur = await journal.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP_NAME,)
            )
            row = await cur.fetchone()
            if row and row[0] == 0:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(hub_connections_gone(), 10)
    scans = await log_chunk_scans(journal) - scans_before
    per_connect = hub.stats.init_queries + hub.stats.catchup_queries
    assert scans == per_connect + hub.stats.feed_queries
    assert scans - per_connect <= n + 2  # not 50 * n


async def test_slow_follower_falls_back_to_rereading_and_never_blocks_others(
    pg_dsn: str, journal: psycopg.AsyncConnection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """A reader that stops reading overflows its small buffer; the others keep receiving, and
    when it reads again it gets every chunk, in order, once."""
    aid = await create_action(journal)
    hub = LogHub(pg_dsn, pool, buffer_chunks=4, poll_interval=3600)
    gate = asyncio.Event()
    slow = Follower(hub, aid, gate)
    fast = Follower(hub, aid)
    await until(lambda: hub.stats.catchup_queries == 2 and hub.listening.is_set())
    ids = []
    for i in range(30):
        ids.append(await append_chunk(journal, aid, f"line {i}\n"))
        await until(lambda i=i: len(fast.chunks) == i + 1)  # not held up by the slow one
    assert len(slow.chunks) <= 1
    assert hub.stats.overflows >= 1
    gate.set()
    await set_state(journal, aid, "failed")
    await asyncio.wait_for(asyncio.gather(slow.task, fast.task), 10)
    for f in (slow, fast):
        assert [c.id for c in f.chunks] == ids
        assert f.end == End("failed")
    await hub.stop()


async def test_follow_starts_after_a_given_chunk_id(
    pg_dsn: str, journal: psycopg.AsyncConnection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """`after` (the SSE Last-Event-ID) skips exactly the chunks already delivered."""
    aid = await create_action(journal)
    ids = [await append_chunk(journal, aid, f"{i}") for i in range(5)]
    await set_state(journal, aid, "succeeded")
    hub = LogHub(pg_dsn, pool, page_size=2, poll_interval=3600)
    got = [item async for item in hub.follow(aid, after=ids[1])]
    assert [c.id for c in got if isinstance(c, Chunk)] == ids[2:]
    assert got[-1] == End("succeeded")
    with pytest.raises(ActionNotFound):
        async for _ in hub.follow(aid + 1000):
            pass
    await hub.stop()


async def test_listener_reconnects_and_catches_up_on_what_it_missed(
    pg_dsn: str, journal: psycopg.AsyncConnection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """The LISTEN connection is killed; chunks written meanwhile still reach the followers."""
    aid = await create_action(journal)
    hub = LogHub(pg_dsn, pool, poll_interval=3600, retry_delay=0.1)
    f = Follower(hub, aid)
    await until(lambda: hub.stats.catchup_queries == 1 and hub.listening.is_set())
    ids = [await append_chunk(journal, aid, "before\n")]
    await until(lambda: len(f.chunks) == 1)

    await journal.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
    )
    await until(lambda: not hub.listening.is_set())
    ids.append(await append_chunk(journal, aid, "while the listener was away\n"))
    await until(lambda: hub.stats.listen_connects == 2)
    await until(lambda: len(f.chunks) == 2)
    ids.append(await append_chunk(journal, aid, "after\n"))
    await set_state(journal, aid, "succeeded")
    await asyncio.wait_for(f.task, 10)
    assert [c.id for c in f.chunks] == ids
    await hub.stop()


async def test_stopping_the_hub_ends_every_stream(
    pg_dsn: str, journal: psycopg.AsyncConnection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """On shutdown followers' streams end (without `end`: the action is still running)."""
    aid = await create_action(journal)
    hub = LogHub(pg_dsn, pool, poll_interval=3600)
    followers = [Follower(hub, aid) for _ in range(3)]
    await until(lambda: hub.stats.catchup_queries == 3)
    await hub.stop()
    await asyncio.wait_for(asyncio.gather(*(f.task for f in followers)), 5)
    assert all(f.end is None for f in followers)
    assert hub.followed == 0
