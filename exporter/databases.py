"""Read-only queries on a user's PostgreSQL or MySQL/MariaDB database.

The exporter never writes to a user's database. Every query runs inside a READ ONLY
transaction (PostgreSQL: `SET TRANSACTION READ ONLY` on a session whose default is read-only
too; MySQL/MariaDB: `SET SESSION TRANSACTION READ ONLY` and `START TRANSACTION READ ONLY`) that
is rolled back afterwards, so a query that tries to write fails with the database's own
message. Drivers accept one statement per call (psycopg's extended protocol, pymysql without
MULTI_STATEMENTS), so `COMMIT; DELETE ...` cannot escape the transaction either.

Three timeouts, so that a hung server cannot stall a check: the driver's connect timeout, the
server's statement timeout set per query (PostgreSQL `statement_timeout`, MySQL
`max_execution_time`, MariaDB `max_statement_time`), and a client-side deadline around the
driver call, which runs in a thread. A call that misses its deadline is abandoned: the check
reports it at once, a cancel is sent (PostgreSQL cancel request, MySQL `KILL QUERY`), and the
connection is closed when the thread returns. Connections are kept between collections and
dropped after any error, so the next query reconnects.

Every query also reads the server's clock (`now()`, `UTC_TIMESTAMP(6)`) in the same
transaction, so ages are computed against the database's time, not the exporter's. Sessions
run in UTC: naive timestamps (`timestamp without time zone`, MySQL `DATETIME`) are taken as UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import psycopg
import pymysql
from psycopg import errors as pg_errors

from exporter.config import DatabaseConfig, parse_mysql_dsn
from exporter.errors import CheckUnknown

__all__ = ["Database", "Databases", "QueryResult", "discard_result", "in_daemon_thread"]

log = logging.getLogger(__name__)

# The client-side deadline is the statement timeout plus this much, so that a statement the
# server stops on time reports the server's own message rather than ours.
CLIENT_SLACK = 1.0
# Calls abandoned at their deadline whose thread has not returned yet; past this many, a
# database is reported unknown at once instead of tying up another thread.
MAX_HUNG = 4


# Server gone away, connection lost (not by our read timeout), killed, dropped when idle.
_MYSQL_LOST = frozenset({2006, 2013, 1927, 4031})


class ConnectionLost(CheckUnknown):
    """The connection broke (server restarted, connection killed): worth one retry when the
    connection had been sitting idle since an earlier collection."""


@dataclass(frozen=True)
class QueryResult:
    """What a check's query returned, and the database's clock when it ran."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    now: datetime  # timezone-aware, UTC


class _Session(Protocol):
    def run(self, query: str, timeout: float) -> QueryResult: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


def _scrub(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


class _PgSession:
    """One psycopg connection, read-only by default and per transaction."""

    def __init__(self, config: DatabaseConfig, name: str) -> None:
        self._label = name
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, math.ceil(config.connect_timeout)),
            "autocommit": False,
        }
        dsn = config.secret_dsn()
        if "application_name" not in psycopg.conninfo.conninfo_to_dict(dsn):
            kwargs["application_name"] = "taskmedic-exporter"
        password = config.password()
        if password is not None:
            kwargs["password"] = password
        try:
            self._conn = psycopg.connect(dsn, **kwargs)
            with self._conn.cursor() as cur:
                cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cur.execute("SET TIME ZONE 'UTC'")
            self._conn.commit()
        except psycopg.Error as exc:
            raise CheckUnknown(
                f"cannot connect to database {name} ({config.display()}): {_pg_message(exc)}"
            ) from None

    def run(self, query: str, timeout: float) -> QueryResult:
        ms = max(1, int(timeout * 1000))
        try:
            with self._conn.cursor() as cur:
                # The first statement of the transaction: it fixes the access mode.
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(
                    "SELECT set_config('statement_timeout', %s, true),"
                    " set_config('TimeZone', 'UTC', true), now()",
                    (str(ms),),
                )
                head = cur.fetchone()
                assert head is not None
                now = head[2]
                # The query is the operator's own, from the config file; it runs read-only.
                cur.execute(query)
                if cur.description is None:
                    raise CheckUnknown("the query returned no result set (is it a SELECT?)")
                columns = tuple(d.name for d in cur.description)
                rows = [tuple(r) for r in cur.fetchall()]
        except pg_errors.QueryCanceled as exc:
            raise CheckUnknown(
                f"query on database {self._label} timed out after {timeout:g}s: {_pg_message(exc)}"
            ) from None
        except psycopg.Error as exc:
            kind = ConnectionLost if self._conn.broken or self._conn.closed else CheckUnknown
            raise kind(f"query on database {self._label} failed: {_pg_message(exc)}") from None
        finally:
            with contextlib.suppress(psycopg.Error):
                self._conn.rollback()
        return QueryResult(columns, rows, now.astimezone(UTC))

    def cancel(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.cancel_safe(timeout=5.0)

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()


def _pg_message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag is not None else None
    return (primary or str(exc).strip() or type(exc).__name__).strip()


class _MySqlSession:
    """One pymysql connection in a read-only, UTC session; knows MySQL from MariaDB."""

    def __init__(self, config: DatabaseConfig, name: str, read_timeout: float) -> None:
        self._label = name
        self._args = parse_mysql_dsn(config.secret_dsn())
        password = config.password()
        if password is not None:
            self._args["password"] = password
        self._secrets = [str(self._args.get("password") or "")]
        self._connect_timeout = max(1.0, config.connect_timeout)
        self.read_timeout = read_timeout
        try:
            self._conn = self._connect(read_timeout)
            with self._conn.cursor() as cur:
                cur.execute("SELECT VERSION(), CONNECTION_ID()")
                version, self._thread_id = cur.fetchone()
                self.mariadb = "mariadb" in str(version).lower()
                cur.execute("SET SESSION time_zone = '+00:00'")
                cur.execute("SET SESSION TRANSACTION READ ONLY")
        except pymysql.MySQLError as exc:
            raise CheckUnknown(
                f"cannot connect to database {name} ({config.display()}): {self._message(exc)}"
            ) from None

    def _connect(self, read_timeout: float) -> Any:
        args = {"charset": "utf8mb4", **self._args}
        return pymysql.connect(
            **args,
            connect_timeout=self._connect_timeout,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=True,
        )

    def _message(self, exc: BaseException) -> str:
        if isinstance(exc, pymysql.MySQLError) and len(exc.args) >= 2:
            text = f"({exc.args[0]}) {exc.args[1]}"
        else:
            text = str(exc) or type(exc).__name__
        return _scrub(text, self._secrets)

    def run(self, query: str, timeout: float) -> QueryResult:
        try:
            with self._conn.cursor() as cur:
                if self.mariadb:
                    cur.execute("SET SESSION max_statement_time = %s", (round(timeout, 3),))
                else:
                    cur.execute(
                        "SET SESSION max_execution_time = %s", (max(1, int(timeout * 1000)),)
                    )
                cur.execute("START TRANSACTION READ ONLY")
                try:
                    cur.execute("SELECT UTC_TIMESTAMP(6)")
                    (now,) = cur.fetchone()
                    cur.execute(query)
                    if cur.description is None:
                        raise CheckUnknown("the query returned no result set (is it a SELECT?)")
                    columns = tuple(d[0] for d in cur.description)
                    rows = [tuple(r) for r in cur.fetchall()]
                finally:
                    with contextlib.suppress(pymysql.MySQLError, OSError):
                        self._conn.rollback()
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            if code in (1969, 3024):  # MariaDB max_statement_time, MySQL max_execution_time
                what = f"timed out after {timeout:g}s"
                raise CheckUnknown(
                    f"query on database {self._label} {what}: {self._message(exc)}"
                ) from None
            message = self._message(exc)
            lost = code in _MYSQL_LOST and "timed out" not in message
            kind = ConnectionLost if lost else CheckUnknown
            raise kind(f"query on database {self._label} failed: {message}") from None
        return QueryResult(columns, rows, now.replace(tzinfo=UTC))

    def cancel(self) -> None:
        """`KILL QUERY` from a second connection: the hung one cannot be used to stop itself."""
        with contextlib.suppress(pymysql.MySQLError, OSError):
            killer = self._connect(self._connect_timeout)
            try:
                with killer.cursor() as cur:
                    cur.execute("KILL QUERY %s", (self._thread_id,))
            finally:
                killer.close()

    def close(self) -> None:
        with contextlib.suppress(pymysql.MySQLError, OSError):
            self._conn.close()


@dataclass
class _Call:
    """One driver call, shared by the waiting coroutine and the thread (under Database._lock)."""

    session: _Session | None = None
    abandoned: bool = False
    finished: bool = False


class Database:
    """One configured database: a few reusable connections and the query deadline logic."""

    def __init__(self, name: str, config: DatabaseConfig) -> None:
        self.name = name
        self.config = config
        self._idle: list[_Session] = []
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
                return await asyncio.wait_for(asyncio.shield(future), deadline)
            except TimeoutError:
                self._abandon(call, future)
                raise CheckUnknown(
                    f"database {self.name} did not answer within {deadline:g}s"
                ) from None
            except asyncio.CancelledError:
                self._abandon(call, future)
                raise

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
                    ok = True
                    return result
                except ConnectionLost:
                    # It broke while idle (a restart between collections): once more, fresh.
                    session.close()
                    if call.abandoned:
                        raise
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

    def _take(self, read_timeout: float) -> _Session | None:
        """An idle connection, if one fits: a MySQL client read timeout is fixed at connect."""
        with self._lock:
            for i, session in enumerate(self._idle):
                if not isinstance(session, _MySqlSession) or session.read_timeout == read_timeout:
                    return self._idle.pop(i)
        return None

    def _open(self, read_timeout: float) -> _Session:
        if self.config.kind == "postgresql":
            return _PgSession(self.config, self.name)
        return _MySqlSession(self.config, self.name, read_timeout)

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
        except BaseException as exc:  # handed to the awaiting coroutine, not swallowed
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
