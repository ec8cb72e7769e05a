"""One connection to a user's database, one statement per call: PostgreSQL and MySQL/MariaDB.

The exporter's checks and the healer's `sql` and `repair` steps run their statements through
these sessions; what differs between them is one switch, `read_only`. Every call, either way:

- sends one statement: psycopg's extended protocol and PyMySQL without MULTI_STATEMENTS refuse
  `COMMIT; DELETE ...`, so a statement cannot end the transaction it runs in and go on;
- sets the server's statement timeout for this statement (PostgreSQL `statement_timeout`,
  local to the transaction; MySQL `max_execution_time`; MariaDB `max_statement_time`), backed
  for MySQL by a client read timeout fixed when the connection opens;
- reads the server's clock in the same transaction, so ages are the database's own time;
- fails with a `DatabaseError` that names the database and never shows a password.

Read-only (a check): the session's default and every transaction are READ ONLY and each call
is rolled back at its end, so a query that tries to write fails with the database's own
message and changes nothing. These sessions run in UTC: naive timestamps read as UTC.

Read-write (a step): the statement runs in a transaction the caller ends with `commit()` or
`rollback()`, in the server's own time zone; values reach it only as parameters bound by the
driver.

Sessions block: the exporter runs them in daemon threads under a client-side deadline, the
healer in asyncio's threads. `cancel()` may be called from another thread while a call runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import pymysql
from psycopg import errors as pg_errors

from exporter.base.connections import DatabaseConfig, mysql_connect_args, pg_connect_args
from exporter.base.errors import TaskmedicError
from exporter.base.types import scrub

__all__ = [
    "ConnectFailed",
    "ConnectionLost",
    "DatabaseError",
    "MySqlSession",
    "PgSession",
    "QueryResult",
    "Session",
    "open_session",
]

# Server gone away, connection lost (not by our read timeout), killed, dropped when idle.
_MYSQL_LOST = frozenset({2006, 2013, 1927, 4031})


class DatabaseError(TaskmedicError):
    """A user's database could not be reached or a statement failed.

    The message names the database; `detail` is the database's own words alone. Neither
    shows a password.
    """

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class ConnectFailed(DatabaseError):
    """The session could not be opened."""


class ConnectionLost(DatabaseError):
    """The connection broke (server restarted, connection killed): worth one retry when the
    connection had been sitting idle since an earlier call."""


@dataclass(frozen=True)
class QueryResult:
    """What a statement returned, and the database's clock when it ran."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    now: datetime  # timezone-aware, UTC
    rowcount: int = -1  # rows the statement changed or returned, as the driver counts them
    result_set: bool = True  # False: the statement returned no rows at all (a plain UPDATE)


class Session(Protocol):
    name: str

    def run(
        self,
        query: str,
        timeout: float,
        params: Mapping[str, Any] | None = None,
        *,
        max_rows: int | None = None,
    ) -> QueryResult: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


def open_session(
    config: DatabaseConfig,
    name: str,
    *,
    read_only: bool,
    read_timeout: float,
    application_name: str,
) -> Session:
    """Connect to database `name` (blocking); raises ConnectFailed.

    `read_timeout` bounds each MySQL read on the client side; `application_name` is what
    PostgreSQL's `pg_stat_activity` shows unless the DSN names itself.
    """
    if config.kind == "postgresql":
        return PgSession(config, name, read_only=read_only, application_name=application_name)
    return MySqlSession(config, name, read_only=read_only, read_timeout=read_timeout)


def _ms(timeout: float) -> int:
    return max(1, int(timeout * 1000))


class PgSession:
    """One psycopg connection."""

    def __init__(
        self, config: DatabaseConfig, name: str, *, read_only: bool, application_name: str
    ) -> None:
        self.name = name
        self.read_only = read_only
        self._scrub = config.scrub
        try:
            self._conn = psycopg.connect(
                **pg_connect_args(config, application_name=application_name)
            )
            if read_only:
                with self._conn.cursor() as cur:
                    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    cur.execute("SET TIME ZONE 'UTC'")
                self._conn.commit()
        except psycopg.Error as exc:
            detail = self._message(exc)
            raise ConnectFailed(
                f"cannot connect to database {name} ({config.display()}): {detail}", detail
            ) from None

    def run(
        self,
        query: str,
        timeout: float,
        params: Mapping[str, Any] | None = None,
        *,
        max_rows: int | None = None,
    ) -> QueryResult:
        """Run one statement; read-only: in its own READ ONLY transaction, rolled back."""
        try:
            with self._conn.cursor() as cur:
                if self.read_only:
                    # The first statement of the transaction: it fixes the access mode.
                    cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute(
                        "SELECT set_config('statement_timeout', %s, true),"
                        " set_config('TimeZone', 'UTC', true), now()",
                        (str(_ms(timeout)),),
                    )
                else:
                    cur.execute(
                        "SELECT set_config('statement_timeout', %s, true), now()",
                        (str(_ms(timeout)),),
                    )
                head = cur.fetchone()
                assert head is not None
                now: datetime = head[-1]
                # The statement is the operator's own (config or rule file), never request
                # input; values reach it only as bound parameters. Without parameters psycopg
                # would use the simple query protocol, which runs `SELECT 1; COMMIT; DELETE
                # ...` whole: prepared, it goes by the extended protocol, one statement only.
                cur.execute(query, params or None, prepare=True if not params else None)
                if cur.description is None:
                    return QueryResult((), [], now.astimezone(UTC), cur.rowcount, False)
                columns = tuple(d.name for d in cur.description)
                fetched = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows)
                rows = [tuple(r) for r in fetched]
                return QueryResult(columns, rows, now.astimezone(UTC), cur.rowcount)
        except pg_errors.QueryCanceled as exc:
            detail = self._message(exc)
            raise DatabaseError(
                f"query on database {self.name} timed out after {timeout:g}s: {detail}", detail
            ) from None
        except psycopg.Error as exc:
            detail = self._message(exc)
            kind = ConnectionLost if self._conn.broken or self._conn.closed else DatabaseError
            raise kind(f"query on database {self.name} failed: {detail}", detail) from None
        finally:
            if self.read_only:
                with contextlib.suppress(psycopg.Error):
                    self._conn.rollback()

    def commit(self) -> None:
        self._end(self._conn.commit, "commit")

    def rollback(self) -> None:
        self._end(self._conn.rollback, "rollback")

    def _end(self, how: Any, what: str) -> None:
        try:
            how()
        except psycopg.Error as exc:
            detail = self._message(exc)
            raise DatabaseError(
                f"{what} on database {self.name} failed: {detail}", detail
            ) from None

    def cancel(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.cancel_safe(timeout=5.0)

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    def _message(self, exc: psycopg.Error) -> str:
        primary = exc.diag.message_primary if exc.diag is not None else None
        return self._scrub((primary or str(exc).strip() or type(exc).__name__).strip())


class MySqlSession:
    """One PyMySQL connection; knows MySQL from MariaDB (their statement timeouts differ)."""

    def __init__(
        self, config: DatabaseConfig, name: str, *, read_only: bool, read_timeout: float
    ) -> None:
        self.name = name
        self.read_only = read_only
        self.read_timeout = read_timeout
        self._args = mysql_connect_args(config)
        self._secrets = [*config.secrets(), str(self._args.get("password") or "")]
        try:
            self._conn = self._connect(read_timeout)
            with self._conn.cursor() as cur:
                cur.execute("SELECT VERSION(), CONNECTION_ID()")
                version, self._thread_id = cur.fetchone()
                self.mariadb = "mariadb" in str(version).lower()
                if read_only:
                    cur.execute("SET SESSION time_zone = '+00:00'")
                    cur.execute("SET SESSION TRANSACTION READ ONLY")
        except (pymysql.MySQLError, OSError) as exc:
            detail = self._message(exc)
            raise ConnectFailed(
                f"cannot connect to database {name} ({config.display()}): {detail}", detail
            ) from None

    def _connect(self, read_timeout: float) -> Any:
        # Read-only calls open their transaction explicitly (START TRANSACTION READ ONLY);
        # read-write statements join the one the caller commits or rolls back.
        return pymysql.connect(
            **self._args,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=self.read_only,
        )

    def _message(self, exc: BaseException) -> str:
        if isinstance(exc, pymysql.MySQLError) and len(exc.args) >= 2:
            text = f"({exc.args[0]}) {exc.args[1]}"
        else:
            text = str(exc) or type(exc).__name__
        return scrub(text, self._secrets)

    def run(
        self,
        query: str,
        timeout: float,
        params: Mapping[str, Any] | None = None,
        *,
        max_rows: int | None = None,
    ) -> QueryResult:
        """Run one statement; read-only: in its own READ ONLY transaction, rolled back."""
        try:
            with self._conn.cursor() as cur:
                if self.mariadb:
                    cur.execute("SET SESSION max_statement_time = %s", (round(timeout, 3),))
                else:
                    cur.execute("SET SESSION max_execution_time = %s", (_ms(timeout),))
                if self.read_only:
                    cur.execute("START TRANSACTION READ ONLY")
                try:
                    cur.execute("SELECT UTC_TIMESTAMP(6)")
                    (now,) = cur.fetchone()
                    cur.execute(query, dict(params) if params is not None else None)
                    at = now.replace(tzinfo=UTC)
                    if cur.description is None:
                        return QueryResult((), [], at, cur.rowcount, False)
                    columns = tuple(d[0] for d in cur.description)
                    fetched = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows)
                    return QueryResult(columns, [tuple(r) for r in fetched], at, cur.rowcount)
                finally:
                    if self.read_only:
                        with contextlib.suppress(pymysql.MySQLError, OSError):
                            self._conn.rollback()
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            detail = self._message(exc)
            if code in (1969, 3024):  # MariaDB max_statement_time, MySQL max_execution_time
                raise DatabaseError(
                    f"query on database {self.name} timed out after {timeout:g}s: {detail}",
                    detail,
                ) from None
            lost = code in _MYSQL_LOST and "timed out" not in detail
            kind = ConnectionLost if lost else DatabaseError
            raise kind(f"query on database {self.name} failed: {detail}", detail) from None
        except OSError as exc:  # the socket itself failed under the driver
            detail = self._message(exc)
            raise ConnectionLost(
                f"query on database {self.name} failed: {detail}", detail
            ) from None

    def commit(self) -> None:
        self._end(self._conn.commit, "commit")

    def rollback(self) -> None:
        self._end(self._conn.rollback, "rollback")

    def _end(self, how: Any, what: str) -> None:
        try:
            how()
        except (pymysql.MySQLError, OSError) as exc:
            detail = self._message(exc)
            raise DatabaseError(
                f"{what} on database {self.name} failed: {detail}", detail
            ) from None

    def cancel(self) -> None:
        """`KILL QUERY` from a second connection: the busy one cannot be used to stop itself."""
        with contextlib.suppress(pymysql.MySQLError, OSError):
            killer = self._connect(self._args["connect_timeout"])
            try:
                with killer.cursor() as cur:
                    cur.execute("KILL QUERY %s", (self._thread_id,))
            finally:
                killer.close()

    def close(self) -> None:
        with contextlib.suppress(pymysql.MySQLError, OSError):
            self._conn.close()
