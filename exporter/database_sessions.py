"""The database drivers behind `exporter.databases`: one read-only session per connection.

`PgSession` (psycopg 3) and `MySqlSession` (pymysql, MySQL and MariaDB) each run one query in
a READ ONLY transaction with the server's statement timeout, read the server's clock in the
same transaction, and roll back. They are blocking: `exporter.databases` runs them in threads
under its client-side deadline. See that module for the guarantees as a whole.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import pymysql
from psycopg import errors as pg_errors

from exporter.base.connections import DatabaseConfig, mysql_connect_args
from exporter.errors import CheckUnknown

__all__ = ["ConnectionLost", "MySqlSession", "PgSession", "QueryResult", "Session"]


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


class Session(Protocol):
    def run(self, query: str, timeout: float) -> QueryResult: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


def _scrub(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


class PgSession:
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


class MySqlSession:
    """One pymysql connection in a read-only, UTC session; knows MySQL from MariaDB."""

    def __init__(self, config: DatabaseConfig, name: str, read_timeout: float) -> None:
        self._label = name
        self._args = mysql_connect_args(config)
        self._secrets = [str(self._args.get("password") or "")]
        self._connect_timeout = self._args["connect_timeout"]
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
        return pymysql.connect(
            **self._args,
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
