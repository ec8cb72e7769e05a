"""The `sql` step, and the database sessions `sql`, `repair` and SQL undo steps share.

Statements come from the operator's rules and are executed as written, with the plan's
parameters bound by the driver (never formatted into the text); psycopg for PostgreSQL, PyMySQL
(in a thread) for MySQL/MariaDB, both with a server-side statement timeout.

`Sessions` decides the transaction: by default each statement commits on its own. When shared
(`transaction: single`, or any dry run) every statement on one database runs in one transaction
held open for the whole action; the executor commits it at the end, or rolls it back (a failure,
a cancel, a dry run), so the steps on that database apply all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pymysql

from exporter.base.connections import DatabaseConfig, mysql_connect_args
from exporter.base.errors import TaskmedicError
from exporter.config import Config
from healer.output import StepOutput
from healer.plan import SqlSpec
from healer.steps.result import MAX_ITEMS, StepError, StepResult, jsonable

__all__ = ["CommitFailed", "Sessions", "SqlOutcome", "run_sql"]


@dataclass(frozen=True)
class SqlOutcome:
    rowcount: int
    returned: list[Any] | None  # first column of the rows a RETURNING gave back, if any


class CommitFailed(TaskmedicError):
    """Committing the shared transaction of `database` failed; later ones were rolled back."""

    def __init__(self, database: str, committed: list[str], message: str) -> None:
        super().__init__(f"commit on {database} failed: {message}")
        self.database = database
        self.committed = committed


class _Session(Protocol):
    async def execute(
        self, query: str, params: Mapping[str, Any], statement_timeout: float
    ) -> SqlOutcome: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def close(self) -> None: ...


class _PgSession:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, db: DatabaseConfig) -> _PgSession:
        extra: dict[str, Any] = {"password": db.password()} if db.password_file else {}
        conn = await psycopg.AsyncConnection.connect(
            db.secret_dsn(),
            autocommit=False,
            connect_timeout=max(2, math.ceil(db.connect_timeout)),
            application_name="taskmedic-healer",
            **extra,
        )
        return cls(conn)

    async def execute(
        self, query: str, params: Mapping[str, Any], statement_timeout: float
    ) -> SqlOutcome:
        async with self.conn.cursor() as cur:
            await cur.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                (str(int(statement_timeout * 1000)),),
            )
            # The statement is the operator's own (a rule file), never request input; values
            # reach it only as bound parameters.
            await cur.execute(query, params)
            returned = None
            if cur.description is not None:
                returned = [row[0] for row in await cur.fetchmany(MAX_ITEMS)]
            return SqlOutcome(cur.rowcount, returned)

    async def commit(self) -> None:
        await self.conn.commit()

    async def rollback(self) -> None:
        await self.conn.rollback()

    async def close(self) -> None:
        await self.conn.close()


class _MySqlSession:
    """PyMySQL is blocking: every call runs in a thread, one at a time."""

    def __init__(self, conn: Any, mariadb: bool) -> None:
        self.conn = conn
        self.mariadb = mariadb

    @classmethod
    async def open(cls, db: DatabaseConfig, statement_timeout: float) -> _MySqlSession:
        def connect() -> _MySqlSession:
            # The socket timeout backs up the server-side one (MySQL enforces it on SELECT only).
            conn = pymysql.connect(
                **mysql_connect_args(db), autocommit=False, read_timeout=statement_timeout + 5
            )
            return cls(conn, "mariadb" in conn.get_server_info().lower())

        return await asyncio.to_thread(connect)

    def _execute(
        self, query: str, params: Mapping[str, Any], statement_timeout: float
    ) -> SqlOutcome:
        with self.conn.cursor() as cur:
            if self.mariadb:
                cur.execute("SET SESSION max_statement_time = %s", (statement_timeout,))
            else:
                cur.execute("SET SESSION max_execution_time = %s", (int(statement_timeout * 1000),))
            cur.execute(query, dict(params))
            returned = None
            if cur.description is not None:
                returned = [row[0] for row in cur.fetchmany(MAX_ITEMS)]
            return SqlOutcome(cur.rowcount, returned)

    async def execute(
        self, query: str, params: Mapping[str, Any], statement_timeout: float
    ) -> SqlOutcome:
        return await asyncio.to_thread(self._execute, query, params, statement_timeout)

    async def commit(self) -> None:
        await asyncio.to_thread(self.conn.commit)

    async def rollback(self) -> None:
        await asyncio.to_thread(self.conn.rollback)

    async def close(self) -> None:
        await asyncio.to_thread(self.conn.close)


_DB_ERRORS = (psycopg.Error, pymysql.MySQLError, OSError)


class Sessions:
    """The database connections of one action (see the module docstring)."""

    def __init__(self, config: Config, *, shared: bool, dry_run: bool) -> None:
        self.config = config
        self.shared = shared
        self.dry_run = dry_run
        self._open: dict[str, _Session] = {}

    async def _connect(self, database: str, statement_timeout: float) -> _Session:
        db = self.config.databases.get(database)
        if db is None:
            raise StepError(f"database {database!r} is not defined under databases")
        try:
            if db.kind == "mysql":
                return await _MySqlSession.open(db, statement_timeout)
            return await _PgSession.open(db)
        except _DB_ERRORS as exc:
            raise StepError(f"cannot connect to database {database}: {exc}") from None

    def transaction_of(self, own_transaction: bool) -> str:
        """What `steps.result.transaction` says about a statement that just ran."""
        if self.dry_run:
            return "rolled_back"
        return "open" if self.shared and not own_transaction else "committed"

    async def execute(
        self,
        database: str,
        query: str,
        params: Mapping[str, Any],
        statement_timeout: float,
        *,
        own_transaction: bool = False,
    ) -> SqlOutcome:
        """Run one statement; commits at once unless shared (dry run: rolls back)."""
        if self.shared and not own_transaction:
            session = self._open.get(database)
            if session is None:
                session = self._open[database] = await self._connect(database, statement_timeout)
            try:
                return await session.execute(query, params, statement_timeout)
            except _DB_ERRORS as exc:
                raise StepError(f"{database}: {exc}") from None
        session = await self._connect(database, statement_timeout)
        try:
            outcome = await session.execute(query, params, statement_timeout)
            if self.dry_run:
                await session.rollback()
            else:
                await session.commit()
            return outcome
        except _DB_ERRORS as exc:
            with contextlib.suppress(*_DB_ERRORS):
                await session.rollback()
            raise StepError(f"{database}: {exc}") from None
        finally:
            with contextlib.suppress(*_DB_ERRORS):
                await session.close()

    @property
    def open_databases(self) -> list[str]:
        return list(self._open)

    async def commit(self) -> list[str]:
        """Commit every shared transaction in the order they began; returns the databases.

        Atomic per database, not across databases: when a commit fails, the ones before it
        stay committed and the ones after it are rolled back (`CommitFailed` says which).
        """
        if self.dry_run:  # a dry run never commits, whoever asks
            await self.rollback()
            return []
        committed: list[str] = []
        for name, session in list(self._open.items()):
            try:
                await session.commit()
            except _DB_ERRORS as exc:
                await self.rollback()
                raise CommitFailed(name, committed, str(exc)) from None
            committed.append(name)
            del self._open[name]
            with contextlib.suppress(*_DB_ERRORS):
                await session.close()
        return committed

    async def rollback(self) -> list[str]:
        """Roll back and close every shared transaction; returns the databases."""
        names = list(self._open)
        for session in self._open.values():
            with contextlib.suppress(*_DB_ERRORS):
                await session.rollback()
            with contextlib.suppress(*_DB_ERRORS):
                await session.close()
        self._open.clear()
        return names


async def run_sql(
    spec: SqlSpec, sessions: Sessions, output: StepOutput, *, own_transaction: bool = False
) -> StepResult:
    """Run the statement with its bound parameters; records the row count it changed."""
    outcome = await sessions.execute(
        spec.database, spec.query, spec.params, spec.timeout, own_transaction=own_transaction
    )
    transaction = sessions.transaction_of(own_transaction)
    verb = "would change" if sessions.dry_run else "changed"
    output.system(f"sql on {spec.database}: {verb} {outcome.rowcount} rows ({transaction})")
    result: dict[str, Any] = {
        "database": spec.database,
        "rowcount": outcome.rowcount,
        "transaction": transaction,
    }
    if sessions.dry_run:
        result["dry_run"] = True
    if outcome.returned is not None:
        result["returned"] = jsonable(outcome.returned)
    return StepResult(result)
