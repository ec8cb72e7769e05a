"""The `sql` step, and the database connections `sql`, `repair` and SQL undo steps share.

Statements come from the operator's rules and are executed as written, with the plan's
parameters bound by the driver (never formatted into the text), each with a server-side
statement timeout, through the read-write sessions of `exporter.base.sessions` (blocking: they
run in threads).

`Sessions` decides the transaction: by default each statement commits on its own. When shared
(`transaction: single`, or any dry run) every statement on one database runs in one transaction
held open for the whole action; the executor commits it at the end, or rolls it back (a failure,
a cancel, a dry run), so the steps on that database apply all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.base.errors import TaskmedicError
from exporter.base.sessions import ConnectFailed, DatabaseError, Session, open_session
from exporter.config import Config
from healer.errors import StepFailed
from healer.plan import SqlSpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import MAX_ITEMS, StepResult, jsonable

__all__ = ["CommitFailed", "Sessions", "SqlOutcome", "run_sql"]

T = TypeVar("T")
# The client's read timeout on MySQL is the first statement's timeout plus this much: the
# server stops a statement on time and says so, the socket timeout is the backstop.
READ_SLACK = 5.0


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


def _discard(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call nobody awaits any more (no 'never retrieved' warning)."""
    if not future.cancelled():
        future.exception()


def _close_if_opened(future: asyncio.Future[Session]) -> None:
    """A connection that opened after its step was cancelled is closed, not left to the GC."""
    if not future.cancelled() and future.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, future.result().close)


class _Connection:
    """A read-write session driven from the event loop, each blocking call in a thread.

    A call cancelled while its statement runs (a cancel request, a lost lease, shutdown) asks
    the server to cancel the statement and waits for the thread to return before letting the
    cancellation through: the connection is never used by two threads at once, and the
    rollback that follows does not wait for a statement nobody wants any more.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    async def open(cls, db_name: str, config: Config, statement_timeout: float) -> _Connection:
        db = config.databases[db_name]
        opening = asyncio.ensure_future(
            asyncio.to_thread(
                open_session,
                db,
                db_name,
                read_only=False,
                read_timeout=statement_timeout + READ_SLACK,
                application_name="taskmedic-healer",
            )
        )
        try:
            return cls(await asyncio.shield(opening))
        except asyncio.CancelledError:
            opening.add_done_callback(_close_if_opened)
            raise

    async def _call(self, fn: Callable[[], T]) -> T:
        call = asyncio.ensure_future(asyncio.to_thread(fn))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(_discard)
            await asyncio.to_thread(self.session.cancel)
            await asyncio.wait({call})
            raise

    async def execute(
        self, query: str, params: Mapping[str, Any], statement_timeout: float
    ) -> SqlOutcome:
        res = await self._call(
            lambda: self.session.run(query, statement_timeout, params, max_rows=MAX_ITEMS)
        )
        returned = [row[0] for row in res.rows] if res.result_set else None
        return SqlOutcome(res.rowcount, returned)

    async def commit(self) -> None:
        await self._call(self.session.commit)

    async def rollback(self) -> None:
        await self._call(self.session.rollback)

    async def close(self) -> None:
        await self._call(self.session.close)


class Sessions:
    """The database connections of one action (see the module docstring)."""

    def __init__(self, config: Config, *, shared: bool, dry_run: bool) -> None:
        self.config = config
        self.shared = shared
        self.dry_run = dry_run
        self._open: dict[str, _Connection] = {}

    async def _connect(self, database: str, statement_timeout: float) -> _Connection:
        if database not in self.config.databases:
            raise StepFailed(f"database {database!r} is not defined under databases")
        try:
            return await _Connection.open(database, self.config, statement_timeout)
        except ConnectFailed as exc:
            raise StepFailed(f"cannot connect to database {database}: {exc.detail}") from None

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
            conn = self._open.get(database)
            if conn is None:
                conn = self._open[database] = await self._connect(database, statement_timeout)
            try:
                return await conn.execute(query, params, statement_timeout)
            except DatabaseError as exc:
                raise StepFailed(f"{database}: {exc.detail}") from None
        conn = await self._connect(database, statement_timeout)
        try:
            outcome = await conn.execute(query, params, statement_timeout)
            if self.dry_run:
                await conn.rollback()
            else:
                await conn.commit()
        except DatabaseError as exc:
            with contextlib.suppress(DatabaseError):
                await conn.rollback()
            raise StepFailed(f"{database}: {exc.detail}") from None
        else:
            return outcome
        finally:
            await conn.close()

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
        for name, conn in list(self._open.items()):
            try:
                await conn.commit()
            except DatabaseError as exc:
                await self.rollback()
                raise CommitFailed(name, committed, exc.detail) from None
            committed.append(name)
            del self._open[name]
            await conn.close()
        return committed

    async def rollback(self) -> list[str]:
        """Roll back and close every shared transaction; returns the databases."""
        names = list(self._open)
        for conn in self._open.values():
            with contextlib.suppress(DatabaseError):
                await conn.rollback()
            await conn.close()
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
