"""Reaching the journal: the connection pool, the embedded server, and what "unavailable" means.

Every failure to reach or write the journal becomes `JournalUnavailable`, which the web app
answers with 503 (Alertmanager then retries with backoff) and the CLI with exit code 2. Such a
failure always happens inside a transaction that PostgreSQL rolls back, so nothing is left
half-written. A bug (a constraint violation, a syntax error) is NOT mapped: it stays loud.

With no `healer.journal` configured, the healer starts an embedded PostgreSQL (`pgserver`) in
`<data_dir>/journal`; every process that uses the same data directory shares that server and
the last one to exit stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from exporter.base.types import scrub
from healer.errors import JournalUnavailable

if TYPE_CHECKING:
    from healer.config import HealerConfig

__all__ = [
    "RETRYABLE",
    "check_idle_connection",
    "embedded_dsn",
    "journal_dsn",
    "journal_errors",
    "journal_secrets",
    "open_pool",
    "reason",
    "unavailable",
]

log = logging.getLogger(__name__)

# Conflicts between concurrent transactions: retried by the caller, never reported as down.
RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_DOWN = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed, OSError)


def unavailable(exc: BaseException) -> bool:
    """True when `exc` means the journal could not be reached or the connection broke."""
    return isinstance(exc, _DOWN) and not isinstance(exc, RETRYABLE)


def reason(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A driver's error on one line, with `secrets` and any password it quotes masked."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    return scrub("; ".join(lines), secrets) or type(exc).__name__


@contextlib.contextmanager
def journal_errors(what: str = "journal", secrets: Iterable[str] = ()) -> Iterator[None]:
    """Turn "cannot reach or write the journal" into JournalUnavailable; let bugs through.

    `secrets` (the journal's DSN and password) are masked in the exception's detail."""
    try:
        yield
    except JournalUnavailable:
        raise
    except BaseException as exc:
        if not unavailable(exc):
            raise
        # The message names the failure class only (HTTP clients see it); the reason, masked,
        # is the detail an operator reads.
        raise JournalUnavailable(
            f"{what} unavailable ({type(exc).__name__})", detail=reason(exc, secrets)
        ) from exc


def journal_secrets(config: HealerConfig) -> list[str]:
    """What an error about the configured journal must not show: its DSN and passwords."""
    journal = config.healer.journal
    return journal.secrets() if journal is not None else []


async def check_idle_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check on checkout: raise when an idle connection no longer works.

    A pooled connection sits idle with nothing to receive: it sends no LISTEN, and the server
    speaks to it unasked only to say goodbye (a restart or `pg_terminate_backend` sends an
    error, then closes the socket). So a readable socket is the sign of trouble, and only
    then does the check pay for a round trip. Checking every checkout with a query cost a
    round trip per request; this costs a poll(2). A connection broken while idle is thus
    replaced before it is handed out, and a restarted journal costs no 503.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        await AsyncConnectionPool.check_connection(conn)


async def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, wait_timeout: float = 5.0
) -> AsyncConnectionPool[Any]:
    """An opened pool; a connection broken while idle is replaced before it is handed out."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=wait_timeout,
        open=False,
        check=check_idle_connection,
        kwargs={"autocommit": True, "connect_timeout": max(1, int(wait_timeout))},
        name="taskmedic-journal",
    )
    await pool.open(wait=False)
    return pool


def _start_embedded(data_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start or join the embedded server, saying so in one line.

    pgserver logs every initdb and pg_ctl run with its whole output at INFO (some 50 lines on
    the first start), and its import warns when XDG_RUNTIME_DIR is unset (it falls back to
    /tmp, which is fine): only its warnings and errors are kept.
    """
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    where = data_dir.resolve() / "journal"
    fresh = not (where / "PG_VERSION").exists()
    server = get_server(where, cleanup_mode="stop")
    log.info("embedded journal %s in %s", "created" if fresh else "started", where)
    dsn: str = server.get_uri()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'taskmedic'").fetchone()
        if row is None:
            with contextlib.suppress(pg_errors.DuplicateDatabase):
                conn.execute("CREATE DATABASE taskmedic")
    return server.get_uri(database="taskmedic"), server.cleanup


async def embedded_dsn(data_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start (or join) the embedded journal under `data_dir`; returns its DSN and a closer."""
    return await asyncio.to_thread(_start_embedded, data_dir)


@contextlib.asynccontextmanager
async def journal_dsn(config: HealerConfig) -> AsyncIterator[str]:
    """The configured journal DSN, or an embedded server's for as long as the block runs."""
    journal = config.healer.journal
    if journal is not None:
        dsn = journal.secret_dsn()
        password = journal.password()
        yield make_conninfo(dsn, password=password) if password is not None else dsn
        return
    dsn, close = await embedded_dsn(config.data_dir())
    try:
        yield dsn
    finally:
        await asyncio.to_thread(close)
