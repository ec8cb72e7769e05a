"""Group commit for POST /alerts: notifications that arrive together share one transaction.

Each notification is still recorded whole or not at all, and its request is answered only
once the transaction that holds it has committed. What the batch saves is the journal's fixed
cost per transaction: a round trip, a pool checkout, the statement's planning, the WAL flush
of the commit and the turn at PostgreSQL's notification-queue lock, which NOTIFYing
transactions hold one at a time through that flush. One notification at a time, a batch is
that one notification and nothing waits: a free writer takes what is queued at once and never
lingers for more. Under a storm, the requests that arrive while the writers are busy go
together in the next transaction.

A batch is decided in arrival order inside one transaction, so a notification sees the
actions of the ones before it exactly as if they had committed first (cooldown, the circuit
breaker, a repeat of the same firing). When a batch fails for any reason but an unreachable
journal (PostgreSQL refused one notification's data, a bug), nothing of it was written, and
each notification of it is written again alone: one bad notification fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from healer.errors import JournalUnavailable
from healer.journal.pool import RETRYABLE, journal_errors
from healer.journal.queries import q
from healer.metrics import HealerMetrics

__all__ = ["IngestWriter", "Notice"]

log = logging.getLogger(__name__)
# Who the `created` events of ingested actions name.
ACTOR = "ingest"


@dataclass
class Notice:
    """One notification as the journal records it.

    `item` is its JSON object for taskmedic_ingest_batch (migration 0003), already encoded:
    the request handler encodes it, so a writer only joins texts. `locks` are the rule+target
    pairs its decisions need; `alerts` sizes the batch.
    """

    item: str
    locks: Sequence[tuple[str, str]]
    alerts: int
    future: asyncio.Future[dict[str, Any]] = field(init=False)


def _verbatim(text: str) -> str:
    """A Jsonb "dumps" for text that already is JSON."""
    return text


class IngestWriter:
    """Writes notices to the journal in batches, one transaction at a time as a rule.

    One writer makes the largest batches, and the fewest round trips and commits: under a
    storm that is what the healer's single thread and the journal can afford. A second writer
    (up to `writers`) starts only when every writer has been in its transaction for more than
    `spare_after` seconds (a journal that is slow to commit, a lock another healer holds), so
    one slow transaction never holds up every alert behind it.

    `max_alerts` bounds a batch (a notification with more alerts still goes alone); the
    writers bound the journal connections ingest holds, whatever the number of requests.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        metrics: HealerMetrics | None = None,
        writers: int = 2,
        spare_after: float = 0.05,
        max_alerts: int = 256,
    ) -> None:
        if writers < 1 or max_alerts < 1 or spare_after < 0:
            raise ValueError("writers and max_alerts must be at least 1, spare_after >= 0")
        self._pool = pool
        self._metrics = metrics
        self._writers = writers
        self._spare_after = spare_after
        self._max_alerts = max_alerts
        self._queue: deque[Notice] = deque()
        # Counted by the drain loops themselves, not by their tasks' done callbacks (those run
        # a loop turn late, and a notice queued in between would wait for no writer).
        self._active = 0
        # When each writer's transaction under way began (loop time), by writer.
        self._writing: dict[int, float] = {}
        self._spare_check: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        """Notices waiting for a writer."""
        return len(self._queue)

    async def record(self, notice: Notice) -> dict[str, Any]:
        """What taskmedic_ingest returned for `notice`, once it has committed.

        Raises JournalUnavailable (nothing of it was written), or the error PostgreSQL gave
        for this notice alone.
        """
        if self._closed:
            raise JournalUnavailable("journal unavailable (the healer is stopping)")
        notice.future = asyncio.get_running_loop().create_future()
        self._queue.append(notice)
        self._kick()
        return await notice.future

    def _spare_due(self) -> None:
        self._spare_check = None
        self._kick()

    def _kick(self) -> None:
        """Start a writer for the queue: the first at once, a spare once all are slow."""
        if self._closed or not self._queue or self._active >= self._writers:
            return
        if self._active > 0:
            loop = asyncio.get_running_loop()
            # A writer between two batches takes the queue itself.
            if len(self._writing) < self._active:
                return
            due = min(self._writing.values()) + self._spare_after
            if loop.time() < due:
                if self._spare_check is None:
                    self._spare_check = loop.call_at(due, self._spare_due)
                return
        self._active += 1
        task = asyncio.create_task(self._drain(), name="ingest-writer")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Take no more notices; wait for the batches under way."""
        self._closed = True
        if self._spare_check is not None:
            self._spare_check.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _take(self) -> list[Notice]:
        """The next batch: the oldest notices up to `max_alerts` alerts (at least one)."""
        batch: list[Notice] = []
        alerts = 0
        while self._queue:
            notice = self._queue[0]
            if notice.future.done():  # its request was cancelled: nobody waits for it
                self._queue.popleft()
                continue
            if batch and alerts + notice.alerts > self._max_alerts:
                break
            batch.append(self._queue.popleft())
            alerts += notice.alerts
        return batch

    async def _drain(self) -> None:
        me = id(asyncio.current_task())
        loop = asyncio.get_running_loop()
        try:
            while batch := self._take():
                self._writing[me] = loop.time()
                try:
                    await self._write(batch)
                except asyncio.CancelledError:
                    _settle_all(batch, JournalUnavailable("journal unavailable (cancelled)"))
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug: loud, in every request it concerns
                    _settle_all(batch, exc)
                finally:
                    del self._writing[me]
        finally:
            self._active -= 1

    async def _write(self, batch: list[Notice]) -> None:
        try:
            results = await self._execute(batch)
        except JournalUnavailable as exc:
            _settle_all(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 - any other error: each notification alone
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            log.warning(
                "a batch of %d notifications failed (%s); writing each alone",
                len(batch),
                type(exc).__name__,
            )
            for notice in batch:
                await self._write([notice])
            return
        if self._metrics is not None:
            self._metrics.ingest_batch.observe(len(batch))
        for notice, result in zip(batch, results, strict=True):
            if not notice.future.done():
                notice.future.set_result(result)

    async def _execute(self, batch: list[Notice]) -> list[dict[str, Any]]:
        params = {
            # The items are JSON texts already: joined, they are the JSON array.
            "items": Jsonb("[" + ",".join(n.item for n in batch) + "]", dumps=_verbatim),
            "actor": ACTOR,
            "locks": Jsonb([list(lock) for n in batch for lock in n.locks]),
        }

        async def once() -> list[dict[str, Any]]:
            with journal_errors():
                async with self._pool.connection() as conn:
                    # Autocommit: the statement is its own transaction, and execute() returns
                    # only once it has committed (or PostgreSQL has rolled all of it back).
                    cur = await conn.execute(q("ingest_batch"), params)
                    row = await cur.fetchone()
            assert row is not None
            results: list[dict[str, Any]] = row[0]
            return results

        try:
            return await once()
        except RETRYABLE:
            pass
        # A conflict with a concurrent transaction, which PostgreSQL rolled back whole. The
        # retries go through tenacity; the first attempt alone does not pay for its machinery.
        results: list[dict[str, Any]] = []
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_after_attempt(4),
            wait=wait_random(0.01, 0.2),
            reraise=True,
        ):
            with attempt:
                results = await once()
        return results


def _settle(notice: Notice, exc: BaseException) -> None:
    if not notice.future.done():
        notice.future.set_exception(exc)


def _settle_all(batch: list[Notice], exc: BaseException) -> None:
    for notice in batch:
        _settle(notice, exc)
