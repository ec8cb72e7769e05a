"""Read-only queries on a user's PostgreSQL or MySQL/MariaDB database.

The exporter never writes to a user's database. Every query runs in a read-only session of
`exporter.base.sessions`: inside a READ ONLY transaction (PostgreSQL: `SET TRANSACTION READ
ONLY` on a session whose default is read-only too; MySQL/MariaDB: `SET SESSION TRANSACTION READ
ONLY` and `START TRANSACTION READ ONLY`) that is rolled back afterwards, so a query that tries
to write fails with the database's own message. Drivers accept one statement per call
(psycopg's extended protocol, pymysql without MULTI_STATEMENTS), so `COMMIT; DELETE ...`
cannot escape the transaction either.

Three timeouts, so that a hung server cannot stall a check: the driver's connect timeout, the
server's statement timeout set per query (PostgreSQL `statement_timeout`, MySQL
`max_execution_time`, MariaDB `max_statement_time`), and a client-side deadline around the
driver call, which runs in a thread. A call that misses its deadline is abandoned: the check
reports it at once, a cancel is sent (PostgreSQL cancel request, MySQL `KILL QUERY`), and the
connection is closed when the thread returns. Connections are kept between collections and
dropped after any error; one that broke while idle (a server restart between collections) is
replaced and the query retried once, so a restart does not cost a collection.

Every query also reads the server's clock (`now()`, `UTC_TIMESTAMP(6)`) in the same
transaction, so ages are computed against the database's time, not the exporter's. Sessions
run in UTC: naive timestamps (`timestamp without time zone`, MySQL `DATETIME`) are taken as UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.base.connections import DatabaseConfig
from exporter.base.sessions import (
    ConnectionLost,
    DatabaseError,
    MySqlSession,
    QueryResult,
    Session,
    open_session,
)
from exporter.errors import CheckUnknown

__all__ = ["Database", "Databases", "QueryResult", "discard_result", "in_daemon_thread"]

# The client-side deadline is the statement timeout plus this much, so that a statement the
# server stops on time reports the server's own message rather than ours.
CLIENT_SLACK = 1.0
# Calls abandoned at their deadline whose thread has not returned yet; past this many, a
# database is reported unknown at once instead of tying up another thread.
MAX_HUNG = 4


@dataclass
class _Call:
    """One driver call, shared by the waiting coroutine and the thread (under Database._lock)."""

    session: Session | None = None
    abandoned: bool = False
    finished: bool = False


class Database:
    """One configured database: a few reusable connections and the query deadline logic."""

    def __init__(self, name: str, config: DatabaseConfig) -> None:
        self.name = name
        self.config = config
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._hung = 0
        self._slots = asyncio.Semaphore(config.max_connections)

    async def fetch(self, query: str, statement_timeout: float) -> QueryResult:
        """Run `query` read-only, stopped by the server after `statement_timeout` seconds;
        raise CheckUnknown on any failure, including no answer by the client-side deadline."""
        timeout = statement_timeout
        async with self._slots:
            with self._lock:
                if self._hung >= MAX_HUNG:
                    raise CheckUnknown(
                        f"database {self.name}: {self._hung} earlier queries still hang"
                    )
            call = _Call()
            future = in_daemon_thread(self._run, query, timeout, call)
            deadline = timeout + CLIENT_SLACK + self.config.connect_timeout
            try:
                result = await asyncio.wait_for(asyncio.shield(future), deadline)
            except DatabaseError as exc:
                raise CheckUnknown(str(exc)) from None
            except TimeoutError:
                self._abandon(call, future)
                raise CheckUnknown(
                    f"database {self.name} did not answer within {deadline:g}s"
                ) from None
            except asyncio.CancelledError:
                self._abandon(call, future)
                raise
        if not result.result_set:
            raise CheckUnknown("the query returned no result set (is it a SELECT?)")
        return result

    def _abandon(self, call: _Call, future: asyncio.Future[QueryResult]) -> None:
        future.add_done_callback(discard_result)
        with self._lock:
            if call.finished:
                return
            call.abandoned = True
            self._hung += 1
            session = call.session
        if session is not None:
            # Best effort and off the event loop: a hung server may not answer the cancel.
            in_daemon_thread(session.cancel).add_done_callback(discard_result)

    def _run(self, query: str, timeout: float, call: _Call) -> QueryResult:
        read_timeout = timeout + CLIENT_SLACK
        session = self._take(read_timeout)
        ok = False
        try:
            if session is not None:
                with self._lock:
                    call.session = session
                try:
                    result = session.run(query, timeout)
                except ConnectionLost:
                    # It broke while idle (a restart between collections): once more, fresh.
                    session.close()
                    if call.abandoned:
                        raise
                else:
                    ok = True
                    return result
            session = self._open(read_timeout)
            with self._lock:
                call.session = session
            result = session.run(query, timeout)
            ok = True
            return result
        finally:
            with self._lock:
                call.finished = True
                if call.abandoned:
                    self._hung -= 1
                keep = ok and not call.abandoned and len(self._idle) < self.config.max_connections
                if keep and session is not None:
                    self._idle.append(session)
            if not keep and session is not None:
                session.close()

    def _take(self, read_timeout: float) -> Session | None:
        """An idle connection, if one fits: a MySQL client read timeout is fixed at connect."""
        with self._lock:
            for i, session in enumerate(self._idle):
                if not isinstance(session, MySqlSession) or session.read_timeout == read_timeout:
                    return self._idle.pop(i)
        return None

    def _open(self, read_timeout: float) -> Session:
        return open_session(
            self.config,
            self.name,
            read_only=True,
            read_timeout=read_timeout,
            application_name="taskmedic-exporter",
        )

    def close(self) -> None:
        """Close idle connections; a thread still running closes its own when it returns."""
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()


T = TypeVar("T")


def in_daemon_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run a blocking call in a new daemon thread; its result arrives as an asyncio future.

    Why not an executor: a call abandoned at its deadline may hang for as long as the server
    does, and executor threads are joined at interpreter exit, so one hung database would keep
    a stopped exporter from exiting. A daemon thread is simply left behind.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, outcome: Any) -> None:
        if future.cancelled():
            return
        if ok:
            future.set_result(outcome)
        else:
            future.set_exception(outcome)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, False, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=run, name=f"taskmedic-{fn.__name__}", daemon=True).start()
    return future


def discard_result(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call nobody awaits any more (no 'never retrieved' warning)."""
    if not future.cancelled():
        future.exception()


class Databases:
    """The configured databases by name, opened on first use and closed together."""

    def __init__(self, configs: Mapping[str, DatabaseConfig]) -> None:
        self._configs = configs
        self._open: dict[str, Database] = {}

    def get(self, name: str) -> Database:
        db = self._open.get(name)
        if db is None:
            db = self._open[name] = Database(name, self._configs[name])
        return db

    def close(self) -> None:
        for db in self._open.values():
            db.close()
        self._open.clear()
