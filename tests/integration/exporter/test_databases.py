"""The exporter's database access on real PostgreSQL and MariaDB: read-only, bounded in time,
connections reused, secrets never shown."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from exporter.base.connections import DatabaseConfig
from exporter.databases import Database
from exporter.errors import CheckUnknown
from tests.support.exporter_fixtures import MARIADB
from tests.support.exporter_helpers import FreezableLink, mysql_exec, pg_exec

PG_WRITES = [
    "INSERT INTO jobs VALUES (2, 'new')",
    "UPDATE jobs SET status = 'changed'",
    "DELETE FROM jobs",
    "WITH gone AS (DELETE FROM jobs RETURNING id) SELECT id FROM gone",
    "CREATE TABLE intruder (a int)",
    "TRUNCATE jobs",
    "SELECT nextval('jobs_seq')",
    "DELETE FROM jobs; SELECT 1",
]

MYSQL_WRITES = [
    "INSERT INTO jobs VALUES (2, 'new')",
    "UPDATE jobs SET status = 'changed'",
    "DELETE FROM jobs",
    "CREATE TABLE intruder (a int)",  # DDL commits implicitly: the session default still holds
    "DROP TABLE jobs",
    "TRUNCATE jobs",
    "DELETE FROM jobs; SELECT 1",
]


def database(dsn: str, **extra: object) -> Database:
    return Database("app", DatabaseConfig.model_validate({"dsn": dsn, **extra}))


@pytest.fixture
def pg_jobs(pg_dsn: str) -> str:
    pg_exec(pg_dsn, "CREATE TABLE jobs (id int PRIMARY KEY, status text)")
    pg_exec(pg_dsn, "CREATE SEQUENCE jobs_seq")
    pg_exec(pg_dsn, "INSERT INTO jobs VALUES (1, 'processing')")
    return pg_dsn


@pytest.fixture
def mysql_jobs(mysql_dsn: str) -> str:
    mysql_exec(mysql_dsn, "CREATE TABLE jobs (id int PRIMARY KEY, status varchar(20))")
    mysql_exec(mysql_dsn, "INSERT INTO jobs VALUES (1, 'processing')")
    return mysql_dsn


async def test_postgresql_refuses_every_write_and_the_table_is_unchanged(pg_jobs: str) -> None:
    """The exporter never writes to a user's database: each writing query is an error carrying
    PostgreSQL's own message, and nothing changed afterwards."""
    db = database(pg_jobs)
    try:
        for query in PG_WRITES:
            with pytest.raises(CheckUnknown) as caught:
                await db.fetch(query, 5)
            message = str(caught.value)
            assert "read-only transaction" in message or "multiple commands" in message, query
    finally:
        db.close()
    assert pg_exec(pg_jobs, "SELECT id, status FROM jobs") == [(1, "processing")]
    assert pg_exec(pg_jobs, "SELECT to_regclass('intruder')") == [(None,)]
    assert pg_exec(pg_jobs, "SELECT last_value, is_called FROM jobs_seq") == [(1, False)]


async def test_mariadb_refuses_every_write_and_the_table_is_unchanged(mysql_jobs: str) -> None:
    """Same guarantee on MariaDB (READ ONLY session and transaction, one statement per call)."""
    db = database(mysql_jobs)
    try:
        for query in MYSQL_WRITES:
            with pytest.raises(CheckUnknown) as caught:
                await db.fetch(query, 5)
            message = str(caught.value)
            assert "READ ONLY" in message or "(1064)" in message, (query, message)
    finally:
        db.close()
    assert mysql_exec(mysql_jobs, "SELECT id, status FROM jobs") == [(1, "processing")]
    assert mysql_exec(mysql_jobs, "SHOW TABLES LIKE 'intruder'") == []


async def test_postgresql_statement_timeout_stops_a_slow_query_on_the_server(pg_dsn: str) -> None:
    """A slow query is cancelled by the server's statement_timeout and reported as a timeout;
    it does not keep running after the check gave up."""
    db = database(pg_dsn)
    try:
        with pytest.raises(CheckUnknown, match=r"timed out after 0\.5s"):
            await db.fetch("SELECT pg_sleep(30), now()", 0.5)
        assert (await db.fetch("SELECT 1, now()", 5)).rows[0][0] == 1  # usable afterwards
    finally:
        db.close()
    running = pg_exec(
        pg_dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%' "
        "AND state = 'active'",
    )
    assert running == [(0,)]


async def test_mariadb_statement_timeout_stops_a_slow_query_on_the_server(mysql_dsn: str) -> None:
    """MariaDB's max_statement_time (seconds) stops SLEEP(); the check reports a timeout."""
    db = database(mysql_dsn)
    try:
        with pytest.raises(CheckUnknown, match=r"timed out after 0\.5s"):
            await db.fetch("SELECT 1, UTC_TIMESTAMP() FROM DUAL WHERE SLEEP(30) = 0", 0.5)
        assert (await db.fetch("SELECT 1, UTC_TIMESTAMP()", 5)).rows[0][0] == 1
    finally:
        db.close()


async def test_connection_is_reused_and_replaced_when_it_broke_while_idle(pg_dsn: str) -> None:
    """Collections share a connection; when the server dropped it between two collections
    (a restart, a DBA's kill) the next query reconnects instead of failing."""
    db = database(pg_dsn)
    try:
        first = (await db.fetch("SELECT pg_backend_pid()", 5)).rows[0][0]
        assert (await db.fetch("SELECT pg_backend_pid()", 5)).rows[0][0] == first
        pg_exec(pg_dsn, "SELECT pg_terminate_backend(%s)", (first,))
        third = (await db.fetch("SELECT pg_backend_pid()", 5)).rows[0][0]
        assert third != first
    finally:
        db.close()


async def test_mariadb_connection_killed_while_idle_is_replaced(mysql_dsn: str) -> None:
    db = database(mysql_dsn)
    try:
        first = (await db.fetch("SELECT CONNECTION_ID()", 5)).rows[0][0]
        assert (await db.fetch("SELECT CONNECTION_ID()", 5)).rows[0][0] == first
        mysql_exec(mysql_dsn, f"KILL CONNECTION {int(first)}")
        assert (await db.fetch("SELECT CONNECTION_ID()", 5)).rows[0][0] != first
    finally:
        db.close()


async def test_queries_run_read_only_in_utc_and_report_the_servers_clock(pg_dsn: str) -> None:
    """The result carries the database's now() (aware, UTC) read in the same transaction."""
    db = database(pg_dsn)
    try:
        result = await db.fetch(
            "SELECT current_setting('transaction_read_only'), current_setting('TimeZone')", 5
        )
    finally:
        db.close()
    assert result.rows == [("on", "UTC")]
    assert result.now.tzinfo is not None
    server_now = pg_exec(pg_dsn, "SELECT now()")[0][0]
    assert abs(server_now - result.now) < timedelta(seconds=30)


async def test_mariadb_session_is_read_only_and_utc(mysql_dsn: str) -> None:
    db = database(mysql_dsn)
    try:
        result = await db.fetch("SELECT @@session.tx_read_only, @@session.time_zone", 5)
    finally:
        db.close()
    assert result.rows == [(1, "+00:00")]
    assert result.now.tzinfo is UTC
    assert abs(datetime.now(UTC) - result.now) < timedelta(minutes=5)


async def test_password_file_is_sent_and_never_shown(mysql_dsn: str, tmp_path: Path) -> None:
    """`password_file` replaces the DSN's password: MariaDB's root has none, so a wrong one in
    the file is refused, and the refusal does not repeat it."""
    secret = tmp_path / "db-password"
    secret.write_text("file-secret-8271\n")
    db = database(mysql_dsn, password_file=str(secret))
    try:
        with pytest.raises(CheckUnknown) as caught:
            await db.fetch("SELECT 1", 5)
    finally:
        db.close()
    assert "Access denied" in str(caught.value)
    assert "file-secret-8271" not in str(caught.value)

    secret.write_text("\n")  # the right (empty) password, read again at the next connect
    db = database(mysql_dsn, password_file=str(secret))
    try:
        assert (await db.fetch("SELECT 7", 5)).rows == [(7,)]
    finally:
        db.close()


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word (a hung database host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for c in held:
            c.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_silent_server_is_unknown_and_the_password_is_not_shown(scheme: str) -> None:
    """A host that accepts the connection but never answers ends in CheckUnknown naming the
    database with its DSN masked, not in a hang."""
    with black_hole() as port:
        db = database(f"{scheme}://app:pw-secret-5531@127.0.0.1:{port}/app", connect_timeout=1)
        try:
            with pytest.raises(CheckUnknown) as caught:
                await db.fetch("SELECT 1", 1)
        finally:
            db.close()
    message = str(caught.value)
    assert "app" in message
    assert "pw-secret-5531" not in message


async def test_unreachable_database_names_it_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = database(f"postgresql://app:pw-secret-9911@127.0.0.1:{port}/app")
    try:
        with pytest.raises(CheckUnknown) as caught:
            await db.fetch("SELECT 1", 1)
    finally:
        db.close()
    assert "cannot connect to database app (postgresql://app:***@127.0.0.1" in str(caught.value)
    assert "pw-secret-9911" not in str(caught.value)


def upstream_of(dsn: str) -> tuple[str, int, str]:
    """(host, port, database) of a test DSN; host may be a unix socket directory (pgserver)."""
    if dsn.startswith("mysql://"):
        return MARIADB[0], MARIADB[1], dsn.rsplit("/", 1)[1]
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432))), str(info["dbname"])


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("pg_dsn", "did not answer within"),  # psycopg has no read timeout: our deadline
        ("mysql_dsn", r"Lost connection .* \(timed out\)"),  # pymysql's read timeout
    ],
)
async def test_a_server_that_hangs_mid_query_is_given_up_on(
    fixture: str, expected: str, request: pytest.FixtureRequest
) -> None:
    """The server stops answering in the middle of a query (no error, the connection stays
    open), so its statement timeout cannot help: the client gives up on its own, and the
    database is usable again once the server answers."""
    dsn = request.getfixturevalue(fixture)
    host, port, name = upstream_of(dsn)
    link = FreezableLink(host, port)
    user = "root" if fixture == "mysql_dsn" else "postgres"
    scheme = "mysql" if fixture == "mysql_dsn" else "postgresql"
    db = database(f"{scheme}://{user}@127.0.0.1:{link.port}/{name}", connect_timeout=1)
    try:
        assert (await db.fetch("SELECT 1", 0.5)).rows == [(1,)]
        link.freeze()
        with pytest.raises(CheckUnknown, match=expected):
            await db.fetch("SELECT 2", 0.5)
        link.thaw()
        assert (await db.fetch("SELECT 3", 0.5)).rows == [(3,)]
    finally:
        db.close()
        link.close()
