"""A check or a step runs exactly one statement: `SELECT 1; COMMIT; ... DELETE` cannot end the
read-only (or dry-run) transaction it runs in and go on writing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymysql
import pytest
from pymysql.constants import CLIENT

from exporter.base.connections import DatabaseConfig
from exporter.base.sessions import MySqlSession, open_session
from exporter.checks import run_once
from exporter.config import Config
from exporter.errors import CheckUnknown
from tests.services import need_or_skip, reachable
from tests.support.exporter_helpers import mysql_exec, pg_exec
from tests.support.journal_helpers import (
    StartExecutor,
    insert_action,
    plan,
    sql,
    state_in,
    steps,
)


@pytest.fixture
def mysql_dsn() -> Iterator[str]:
    """A fresh MariaDB database (root, no password), dropped afterwards."""
    need_or_skip(reachable("127.0.0.1", 3306), "MariaDB at 127.0.0.1:3306")
    name = f"tm_single_{uuid.uuid4().hex[:12]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql://root@127.0.0.1:3306/{name}"
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


ESCAPE = "SELECT 1; COMMIT; BEGIN READ WRITE; DELETE FROM t"


def check_config(dsn: str, query: str) -> Config:
    return Config.model_validate(
        {
            "databases": {"app": {"dsn": dsn}},
            "checks": [
                {"name": "c", "type": "stale_status", "database": "app", "max_age": "1m"}
                | {"query": query}
            ],
        }
    )


async def test_a_postgresql_check_cannot_commit_its_way_out_of_read_only(pg_dsn: str) -> None:
    pg_exec(pg_dsn, "CREATE TABLE t (id int)")
    pg_exec(pg_dsn, "INSERT INTO t VALUES (1), (2)")
    with pytest.raises(CheckUnknown, match="cannot insert multiple commands"):
        await run_once(check_config(pg_dsn, ESCAPE), "c", pause=0)
    assert pg_exec(pg_dsn, "SELECT count(*) FROM t") == [(2,)]


async def test_a_check_may_still_hold_a_percent_sign(pg_dsn: str) -> None:
    """One statement by the extended protocol, yet no parameters: `%` is plain text."""
    outcome = await run_once(
        check_config(pg_dsn, "SELECT 1, now() WHERE 'a%' LIKE 'a%'"), "c", pause=0
    )
    assert outcome.findings == []


async def test_a_dry_run_sql_step_cannot_commit(journal_dsn: str, executors: StartExecutor) -> None:
    pg_exec(journal_dsn, "CREATE TABLE t (id int, status text)")
    pg_exec(journal_dsn, "INSERT INTO t VALUES (1, 'new'), (2, 'new')")
    await executors(
        Config.model_validate({"databases": {"app": {"dsn": journal_dsn}}}), dry_run=True
    )
    query = "UPDATE t SET status = 'x' WHERE id = 1; COMMIT; UPDATE t SET status = 'y'"
    action_id = await insert_action(journal_dsn, plan(sql("escape", "app", query)))
    row = await state_in(journal_dsn, action_id, "skipped", "failed", "succeeded")
    assert row["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert "cannot insert multiple commands" in step["error"]
    assert pg_exec(journal_dsn, "SELECT id, status FROM t ORDER BY id") == [(1, "new"), (2, "new")]


@pytest.mark.mariadb
async def test_a_mariadb_check_cannot_run_a_second_statement(mysql_dsn: str) -> None:
    mysql_exec(mysql_dsn, "CREATE TABLE t (id int)")
    mysql_exec(mysql_dsn, "INSERT INTO t VALUES (1), (2)")
    session = open_session(
        DatabaseConfig(dsn=mysql_dsn), "app", read_only=False, read_timeout=5.0, application_name=""
    )
    assert isinstance(session, MySqlSession)
    try:
        assert not session._conn.client_flag & CLIENT.MULTI_STATEMENTS
    finally:
        session.close()
    with pytest.raises(CheckUnknown, match="SQL syntax"):
        await run_once(check_config(mysql_dsn, "SELECT 1, NOW(); DELETE FROM t"), "c", pause=0)
    assert mysql_exec(mysql_dsn, "SELECT count(*) FROM t") == [(2,)]
