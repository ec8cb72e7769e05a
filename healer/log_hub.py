"""The per-process hub that feeds every follower of an action's log from the journal.

The journal is the only source: a follower connected to this replica sees output that a step
running on another replica wrote, because every chunk insert and state change sends a
notification (`taskmedic_log`, `taskmedic_state`) that every replica's hub LISTENs to.

Cost: ONE listening connection per process, and per action that somebody follows, ONE query per
notification, shared by all its followers (the hub reads the new chunks once and fans them out).
A follower reads the journal on its own only when it connects (catching up from its last
event id) and after its buffer overflowed (a slow client): its buffer is bounded, the hub never
waits for it, and it re-reads from the last chunk it delivered, so it sees no gap and no repeat.

Ordering: a chunk's id orders it within its action. The executor is the only writer of an
action's chunks and commits them one after another, so ids grow in commit order and reading
"every chunk after id N" never skips one that commits later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from healer.errors import JournalUnavailable
from healer.journal import channels, logs
from healer.journal.actions import ActionNotFound
from healer.journal.logs import Chunk, Page
from healer.journal.pool import journal_errors
from healer.supervise import LoopHealth, supervise

__all__ = ["Chunk", "End", "HubStats", "LogHub", "read_page"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class End:
    """The action reached a final state: no more output will come."""

    state: str


async def read_page(pool: AsyncConnectionPool[Any], action_id: int, after: int, limit: int) -> Page:
    """Read the chunks after `after` and the action's state in one statement (one snapshot)."""
    with journal_errors(f"log of action {action_id}"):
        async with pool.connection() as conn:
            return await logs.follow_page(conn, action_id, after, limit)


@dataclass(slots=True)
class HubStats:
    """What the hub cost the journal; the tests and the benchmark read these."""

    notifications: int = 0  # notifications received for actions somebody follows
    feed_queries: int = 0  # shared reads, one per notification (coalesced), for all followers
    catchup_queries: int = 0  # a follower's own reads: on connect and after an overflow
    init_queries: int = 0  # one per followed action: where the shared reads start
    overflows: int = 0  # slow followers that fell back to re-reading
    listen_connects: int = 0


class _Follower:
    """One follower's bounded buffer, filled by the hub and drained by the follower."""

    __slots__ = ("buffer", "closed", "end", "lagging", "max_bytes", "max_chunks", "size", "wake")

    def __init__(self, max_chunks: int, max_bytes: int) -> None:
        self.buffer: deque[Chunk] = deque()
        self.size = 0
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self.lagging = False  # the buffer overflowed: re-read from the journal
        self.end: str | None = None
        self.closed = False  # the hub stops: end the stream without an `end` event
        self.wake = asyncio.Event()

    def offer(self, chunks: Iterable[Chunk], stats: HubStats) -> None:
        if self.lagging:
            return
        for c in chunks:
            self.buffer.append(c)
            self.size += len(c.data)
        if len(self.buffer) > self.max_chunks or self.size > self.max_bytes:
            # Never wait for a slow reader: drop what it has not taken, it re-reads by id.
            self.buffer.clear()
            self.size = 0
            self.lagging = True
            stats.overflows += 1
        self.wake.set()

    def take(self) -> Chunk:
        c = self.buffer.popleft()
        self.size -= len(c.data)
        return c


class _Feed:
    """The shared reading position of one followed action."""

    __slots__ = ("action_id", "cursor", "dirty", "error", "followers", "init_task", "ready", "task")

    def __init__(self, action_id: int) -> None:
        self.action_id = action_id
        self.cursor = 0
        self.followers: set[_Follower] = set()
        self.dirty = False
        self.ready = asyncio.Event()
        self.error: JournalUnavailable | None = None
        self.task: asyncio.Task[None] | None = None
        self.init_task: asyncio.Task[None] | None = None


class LogHub:
    """Fans the journal's log chunks out to this process's followers (see the module doc).

    `pool` serves the reads; `dsn` opens the one LISTEN connection. Start it lazily: the first
    `follow()` starts the listener. `poll_interval` is how often the listener checks that its
    connection is alive and re-reads every followed action, in case a notification was lost.
    """

    def __init__(
        self,
        dsn: str,
        pool: AsyncConnectionPool[Any],
        *,
        page_size: int = 500,
        buffer_chunks: int = 256,
        buffer_bytes: int = 4 << 20,
        poll_interval: float = 30.0,
        retry_delay: float = 1.0,
        health: LoopHealth | None = None,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self.page_size = page_size
        self.buffer_chunks = buffer_chunks
        self.buffer_bytes = buffer_bytes
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self._health = health
        self.stats = HubStats()
        self._feeds: dict[int, _Feed] = {}
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.listening = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener (idempotent); `follow()` calls it."""
        if self._closed:
            raise RuntimeError("the log hub is stopped")
        if self._listener is None:
            self._listener = asyncio.create_task(
                supervise("log-listener", self._listen, self._health),
                name="taskmedic-log-listener",
            )

    async def stop(self) -> None:
        """Close the listener and end every follower's stream (they reconnect elsewhere)."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        if self._listener is not None:
            tasks.append(self._listener)
        for feed in self._feeds.values():
            tasks.extend(t for t in (feed.task, feed.init_task) if t is not None)
            for f in feed.followers:
                f.closed = True
                f.wake.set()
        self._feeds.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.listening.clear()

    @property
    def followed(self) -> int:
        """How many actions have followers in this process."""
        return len(self._feeds)

    # --- following ------------------------------------------------------------------------

    async def follow(  # noqa: C901 - one loop over the follower's states reads best whole
        self, action_id: int, after: int = 0
    ) -> AsyncGenerator[Chunk | End, None]:
        """Every chunk of `action_id` with an id above `after`, in order, then `End`.

        Returns without `End` when the hub stops. Raises ActionNotFound, JournalUnavailable.
        """
        self.start()
        feed = self._feeds.get(action_id)
        if feed is None:
            feed = self._feeds[action_id] = _Feed(action_id)
            feed.init_task = asyncio.create_task(self._init(feed))
        me = _Follower(self.buffer_chunks, self.buffer_bytes)
        # Registered before reading anything: every shared read from now on reaches `me`, and
        # what was read before is visible to the catch-up that follows.
        feed.followers.add(me)
        try:
            await feed.ready.wait()
            if feed.error is not None:
                raise feed.error
            cursor = after
            catch_up = True
            while not me.closed:
                if catch_up or me.lagging:
                    catch_up = False
                    me.lagging = False
                    me.buffer.clear()
                    me.size = 0
                    async for item in self._catch_up(action_id, cursor):
                        yield item
                        if isinstance(item, End):
                            return
                        cursor = item.id
                    continue
                while me.buffer and not me.lagging:
                    c = me.take()
                    if c.id > cursor:
                        yield c
                        cursor = c.id
                if me.lagging:
                    continue
                if me.end is not None:
                    yield End(me.end)
                    return
                me.wake.clear()
                if not me.buffer and not me.lagging and not me.closed:
                    await me.wake.wait()
        finally:
            feed.followers.discard(me)
            if not feed.followers and self._feeds.get(action_id) is feed:
                del self._feeds[action_id]

    async def _catch_up(self, action_id: int, cursor: int) -> AsyncGenerator[Chunk | End, None]:
        """The stored chunks after `cursor`, page by page, then `End` if the action is over."""
        while True:
            page = await read_page(self._pool, action_id, cursor, self.page_size)
            self.stats.catchup_queries += 1
            if page.state is None:
                raise ActionNotFound(action_id)
            for c in page.chunks:
                yield c
                cursor = c.id
            if page.full:
                continue
            if page.final:
                yield End(page.state)
            return

    async def _init(self, feed: _Feed) -> None:
        """Start the shared reads after the last chunk that exists now (followers catch up)."""
        try:
            with journal_errors(f"log of action {feed.action_id}"):
                async with self._pool.connection() as conn:
                    cursor = await logs.last_chunk_id(conn, feed.action_id)
            self.stats.init_queries += 1
            feed.cursor = cursor
        except JournalUnavailable as e:
            feed.error = e
            if self._feeds.get(feed.action_id) is feed:
                del self._feeds[feed.action_id]
        finally:
            feed.ready.set()
            feed.init_task = None
        if feed.dirty and feed.error is None:
            self._poke(feed)

    def _poke(self, feed: _Feed) -> None:
        """New output or a state change may be there: read once for all followers."""
        feed.dirty = True
        if feed.ready.is_set() and feed.error is None and feed.task is None and not self._closed:
            feed.task = asyncio.create_task(self._pump(feed))

    async def _pump(self, feed: _Feed) -> None:
        try:
            while feed.dirty and feed.followers and not self._closed:
                feed.dirty = False
                try:
                    page = await read_page(self._pool, feed.action_id, feed.cursor, self.page_size)
                except JournalUnavailable as e:
                    log.warning("log hub: %s; retrying in %.1fs", e, self.retry_delay)
                    feed.dirty = True
                    await asyncio.sleep(self.retry_delay)
                    continue
                self.stats.feed_queries += 1
                if page.chunks:
                    feed.cursor = page.chunks[-1].id
                    for f in list(feed.followers):
                        f.offer(page.chunks, self.stats)
                if page.full:
                    feed.dirty = True
                elif page.final:
                    for f in feed.followers:
                        f.end = page.state or "unknown"
                        f.wake.set()
                    if self._feeds.get(feed.action_id) is feed:
                        del self._feeds[feed.action_id]
                    return
        finally:
            feed.task = None

    # --- the one LISTEN connection ----------------------------------------------------------

    async def _listen(self) -> None:
        while not self._closed:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    await channels.listen(conn, channels.LOG, channels.STATE)
                    self.stats.listen_connects += 1
                    self.listening.set()
                    while not self._closed:
                        # Notifications sent while no connection listened are lost: re-read
                        # every followed action after (re)connecting and on each poll tick.
                        for feed in list(self._feeds.values()):
                            self._poke(feed)
                        async for n in conn.notifies(timeout=self.poll_interval):
                            self._notified(n.payload)
                        await channels.ping(conn)  # the connection is still alive
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as e:
                self.listening.clear()
                log.warning("log hub: LISTEN connection lost (%s); reconnecting", e)
                await asyncio.sleep(self.retry_delay)

    def _notified(self, payload: str) -> None:
        try:
            action_id = int(payload)
        except ValueError:
            log.warning("log hub: ignoring a notification with payload %r", payload[:40])
            return
        feed = self._feeds.get(action_id)
        if feed is not None:
            self.stats.notifications += 1
            self._poke(feed)
