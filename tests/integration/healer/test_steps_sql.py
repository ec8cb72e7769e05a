"""`repair` steps (an exporter check re-run now) and SQL steps on MySQL/MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest

from exporter.base.connections import DatabaseConfig, mysql_connect_args
from exporter.config import Config
from healer.plan import PlanStep, RepairSpec
from tests.services import need_or_skip, reachable
from tests.support.journal_helpers import (
    StartExecutor,
    insert_action,
    plan,
    sql,
    state_in,
    steps,
)

ORPHANS = (
    "SELECT r.id, r.created_at FROM task_record r"
    " LEFT JOIN task_action a ON a.id = r.id WHERE a.id IS NULL"
)
REPAIR = (
    "UPDATE task_record SET status = 'orphaned'"
    " WHERE id = ANY(%(keys)s) AND status = %(from)s RETURNING id"
)


def repair_config(dsn: str) -> Config:
    return Config.model_validate(
        {
            "databases": {"app": {"dsn": dsn}, "down": {"dsn": "postgresql://x@127.0.0.1:1/x"}},
            "checks": [
                {
                    "name": "records",
                    "type": "orphan_rows",
                    "database": "app",
                    "grace": "1m",
                    "query": ORPHANS,
                },
                {"name": "blind", "type": "orphan_rows", "database": "down", "query": ORPHANS},
            ],
        }
    )


def repair(check: str) -> PlanStep:
    return PlanStep(
        name="repair",
        kind="repair",
        repair=RepairSpec(check=check, query=REPAIR, params={"from": "new"}),
    )


@pytest.fixture
async def records(journal_dsn: str) -> str:
    """task_record rows 1-4: 2 has its action; 1 and 3 are old orphans; 4 is within grace."""
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE task_record (id int PRIMARY KEY, status text, created_at timestamptz)"
        )
        await conn.execute("CREATE TABLE task_action (id int PRIMARY KEY)")
        await conn.execute(
            "INSERT INTO task_record VALUES (1, 'new', now() - interval '1 hour'),"
            " (2, 'new', now() - interval '1 hour'), (3, 'new', now() - interval '1 hour'),"
            " (4, 'new', now())"
        )
        await conn.execute("INSERT INTO task_action VALUES (2)")
    return journal_dsn


async def record_statuses(dsn: str) -> dict[int, str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT id, status FROM task_record ORDER BY id")
        return dict(await cur.fetchall())


async def test_repair_changes_only_the_rows_the_check_confirms_now(
    records: str, executors: StartExecutor
) -> None:
    """Row 4 is an orphan too young for grace: the same SQL would touch it, the repair doesn't."""
    await executors(repair_config(records))
    action_id = await insert_action(records, plan(repair("records")))
    row = await state_in(records, action_id, "succeeded", "failed")
    assert row["state"] == "succeeded", row["reason"]
    assert await record_statuses(records) == {1: "orphaned", 2: "new", 3: "orphaned", 4: "new"}
    (step,) = await steps(records, action_id)
    result = step["result"]
    assert sorted(result["confirmed_keys"]) == [1, 3]
    assert result["confirmed"] == 2
    assert sorted(result["changed_keys"]) == [1, 3]
    assert result["rowcount"] == 2
    assert result["transaction"] == "committed"


async def test_repair_in_dry_run_counts_and_changes_nothing(
    records: str, executors: StartExecutor
) -> None:
    await executors(repair_config(records), dry_run=True)
    action_id = await insert_action(records, plan(repair("records")))
    assert (await state_in(records, action_id, "skipped", "failed"))["state"] == "skipped"
    assert set((await record_statuses(records)).values()) == {"new"}
    (step,) = await steps(records, action_id)
    assert step["result"]["rowcount"] == 2
    assert step["result"]["dry_run"] is True


async def test_repair_changes_nothing_when_the_check_cannot_see(
    records: str, executors: StartExecutor
) -> None:
    """CheckUnknown (database down): the step fails and no row is touched."""
    await executors(repair_config(records))
    action_id = await insert_action(records, plan(repair("blind")))
    assert (await state_in(records, action_id, "succeeded", "failed"))["state"] == "failed"
    (step,) = await steps(records, action_id)
    assert step["error"].startswith("check blind could not establish the truth")
    assert set((await record_statuses(records)).values()) == {"new"}


# --- MySQL / MariaDB ---------------------------------------------------------------------


@pytest.fixture
def mariadb() -> Iterator[tuple[str, str]]:
    """A scratch table in MariaDB's `test` database; (dsn, table)."""
    need_or_skip(reachable("127.0.0.1", 3306), "MariaDB at 127.0.0.1:3306")
    dsn = "mysql://root@127.0.0.1:3306/test"
    table = f"jobs_{uuid.uuid4().hex[:8]}"
    args: dict[str, Any] = mysql_connect_args(DatabaseConfig(dsn=dsn))
    conn = pymysql.connect(**{**args, "autocommit": True})
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, status VARCHAR(20))")
            cur.execute(f"INSERT INTO {table} VALUES (1, 'processing'), (2, 'processing')")
        yield dsn, table
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE {table}")
    finally:
        conn.close()


def mysql_statuses(dsn: str, table: str) -> dict[int, str]:
    conn = pymysql.connect(**mysql_connect_args(DatabaseConfig(dsn=dsn)))
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, status FROM {table} ORDER BY id")
            return {int(k): str(v) for k, v in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.mariadb
async def test_sql_steps_on_mariadb_bind_parameters_and_commit_all_or_nothing(
    journal_dsn: str, executors: StartExecutor, mariadb: tuple[str, str]
) -> None:
    dsn, table = mariadb
    await executors(Config.model_validate({"databases": {"shop": {"dsn": dsn}}}))
    ok = await insert_action(
        journal_dsn,
        plan(
            sql(
                "mark",
                "shop",
                f"UPDATE {table} SET status = %(s)s WHERE id IN %(ids)s",
                {"s": "x'); --", "ids": [1]},
            ),
        ),
    )
    assert (await state_in(journal_dsn, ok, "succeeded", "failed"))["state"] == "succeeded"
    assert mysql_statuses(dsn, table) == {1: "x'); --", 2: "processing"}
    (step,) = await steps(journal_dsn, ok)
    assert step["result"]["rowcount"] == 1

    broken = await insert_action(
        journal_dsn,
        plan(
            sql("first", "shop", f"UPDATE {table} SET status = 'failed' WHERE id = 2"),
            sql("second", "shop", "UPDATE no_such_table SET x = 1"),
            transaction="single",
        ),
    )
    assert (await state_in(journal_dsn, broken, "succeeded", "failed"))["state"] == "failed"
    assert mysql_statuses(dsn, table)[2] == "processing"
    first, second = await steps(journal_dsn, broken)
    assert first["state"] == "undone"
    assert "no_such_table" in second["error"]
