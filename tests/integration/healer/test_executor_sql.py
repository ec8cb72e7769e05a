"""SQL steps: bound parameters, row counts, undo, `transaction: single` and dry run."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.support.journal_helpers import (
    StartExecutor,
    app_config,
    fetch,
    insert_action,
    plan,
    sh,
    sql,
    state_in,
    steps,
    until,
)


@pytest.fixture
async def jobs(journal_dsn: str) -> str:
    """A user table `jobs` (in the same database as the journal, for brevity)."""
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE jobs (id int PRIMARY KEY, status text NOT NULL)")
        await conn.execute(
            "INSERT INTO jobs VALUES (1, 'processing'), (2, 'processing'), (3, 'done')"
        )
    return journal_dsn


async def statuses(dsn: str) -> dict[int, str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT id, status FROM jobs ORDER BY id")
        return dict(await cur.fetchall())


async def test_sql_step_binds_parameters_and_records_the_row_count(
    jobs: str, executors: StartExecutor
) -> None:
    """A value that looks like SQL is data: it is bound, never spliced into the statement."""
    await executors(app_config(jobs))
    evil = "x'; DROP TABLE jobs; --"
    p = plan(
        sql(
            "mark",
            "app",
            "UPDATE jobs SET status = %(status)s WHERE status = %(old)s",
            {"status": evil, "old": "processing"},
        )
    )
    action_id = await insert_action(jobs, p)
    assert (await state_in(jobs, action_id, "succeeded", "failed"))["state"] == "succeeded"
    assert await statuses(jobs) == {1: evil, 2: evil, 3: "done"}
    (step,) = await steps(jobs, action_id)
    assert step["result"] == {"database": "app", "rowcount": 2, "transaction": "committed"}


async def test_sql_returning_records_the_changed_keys(jobs: str, executors: StartExecutor) -> None:
    await executors(app_config(jobs))
    p = plan(sql("mark", "app", "UPDATE jobs SET status = 'x' WHERE id < 3 RETURNING id"))
    action_id = await insert_action(jobs, p)
    await state_in(jobs, action_id, "succeeded", "failed")
    (step,) = await steps(jobs, action_id)
    assert sorted(step["result"]["returned"]) == [1, 2]


async def test_sql_undo_restores_the_row_when_a_later_step_fails(
    jobs: str, executors: StartExecutor
) -> None:
    """Without `transaction: single` each statement commits; its declared undo reverts it."""
    await executors(app_config(jobs))
    p = plan(
        sql(
            "fail job 1",
            "app",
            "UPDATE jobs SET status = 'failed' WHERE id = %(id)s",
            {"id": 1},
            undo="UPDATE jobs SET status = 'processing' WHERE id = %(id)s",
        ),
        sh("breaks", "exit 1"),
    )
    action_id = await insert_action(jobs, p)
    assert (await state_in(jobs, action_id, "succeeded", "failed"))["state"] == "failed"
    assert (await statuses(jobs))[1] == "processing"
    first, second = await steps(jobs, action_id)
    assert first["state"] == "undone"
    assert first["result"]["undo"]["by"] == "sql"
    assert first["result"]["undo"]["result"]["rowcount"] == 1
    assert second["state"] == "failed"


async def test_transaction_single_commits_all_or_nothing(
    jobs: str, executors: StartExecutor
) -> None:
    """A failing second statement leaves the first one's row unchanged (rolled back)."""
    await executors(app_config(jobs))
    p = plan(
        sql("first", "app", "UPDATE jobs SET status = 'failed' WHERE id = 1"),
        sql("second", "app", "UPDATE jobs SET status = 'x' WHERE id = 1 / 0"),
        transaction="single",
    )
    action_id = await insert_action(jobs, p)
    row = await state_in(jobs, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    assert "division by zero" in row["reason"]
    assert (await statuses(jobs))[1] == "processing"
    first, second = await steps(jobs, action_id)
    assert first["state"] == "undone"
    assert first["result"]["undo"]["by"] == "rollback"
    assert second["state"] == "failed"
    assert "division by zero" in second["error"]


async def test_transaction_single_commits_every_statement_at_the_end(
    jobs: str, executors: StartExecutor
) -> None:
    """Later statements see earlier ones; the journal records the transaction as committed."""
    await executors(app_config(jobs))
    p = plan(
        sql("first", "app", "UPDATE jobs SET status = 'stage1' WHERE id = 1"),
        sql("second", "app", "UPDATE jobs SET status = 'stage2' WHERE status = 'stage1'"),
        transaction="single",
    )
    action_id = await insert_action(jobs, p)
    assert (await state_in(jobs, action_id, "succeeded", "failed"))["state"] == "succeeded"
    assert (await statuses(jobs))[1] == "stage2"
    rows = await steps(jobs, action_id)
    assert [s["result"]["transaction"] for s in rows] == ["committed", "committed"]
    assert [s["result"]["rowcount"] for s in rows] == [1, 1]


async def test_a_failing_script_rolls_back_the_shared_transaction(
    jobs: str, executors: StartExecutor
) -> None:
    await executors(app_config(jobs))
    p = plan(
        sql("first", "app", "UPDATE jobs SET status = 'failed'"),
        sh("breaks", "exit 2"),
        transaction="single",
    )
    action_id = await insert_action(jobs, p)
    assert (await state_in(jobs, action_id, "succeeded", "failed"))["state"] == "failed"
    assert await statuses(jobs) == {1: "processing", 2: "processing", 3: "done"}


async def test_dry_run_changes_no_row_and_records_the_counts(
    jobs: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """Scripts are not run; SQL runs in a transaction that is rolled back; state `skipped`."""
    marker = tmp_path / "ran"
    await executors(app_config(jobs))
    p = plan(
        sh("would touch", f"touch {marker}"),
        sql(
            "would fail jobs",
            "app",
            "UPDATE jobs SET status = 'failed' WHERE status = %(s)s",
            {"s": "processing"},
        ),
        sql("would delete", "app", "DELETE FROM jobs WHERE status = 'failed'"),
        dry_run=True,
    )
    action_id = await insert_action(jobs, p)
    row = await state_in(jobs, action_id, "succeeded", "failed", "skipped")
    assert row["state"] == "skipped"
    assert "dry run" in row["reason"]
    assert not marker.exists()
    assert await statuses(jobs) == {1: "processing", 2: "processing", 3: "done"}
    script_step, update, delete = await steps(jobs, action_id)
    assert script_step["state"] == "skipped"
    assert script_step["result"]["dry_run"] is True
    assert update["result"]["rowcount"] == 2
    assert update["result"]["transaction"] == "rolled_back"
    assert delete["result"]["rowcount"] == 2  # sees the update it follows, then all rolled back


async def test_the_executor_dry_run_flag_covers_every_action(
    jobs: str, executors: StartExecutor
) -> None:
    await executors(app_config(jobs), dry_run=True)
    action_id = await insert_action(jobs, plan(sql("wipe", "app", "DELETE FROM jobs")))
    assert (await state_in(jobs, action_id, "succeeded", "skipped"))["state"] == "skipped"
    assert len(await statuses(jobs)) == 3
    (step,) = await steps(jobs, action_id)
    assert step["result"]["rowcount"] == 3


async def test_an_undefined_database_fails_the_step_with_its_name(
    journal_dsn: str, executors: StartExecutor
) -> None:
    await executors()
    action_id = await insert_action(journal_dsn, plan(sql("x", "nowhere", "SELECT 1")))
    assert (await state_in(journal_dsn, action_id, "succeeded", "failed"))["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert step["error"] == "database 'nowhere' is not defined under databases"


async def test_a_cancel_stops_the_running_statement_on_the_server(
    jobs: str, executors: StartExecutor
) -> None:
    """The statement does not run on to its 30 s timeout behind a cancelled action: the
    server cancels it at once and the row it would have changed is unchanged."""
    await executors(app_config(jobs))
    slow = "UPDATE jobs SET status = 'x' WHERE id = 1 AND pg_sleep(60) IS NOT NULL"
    action_id = await insert_action(jobs, plan(sql("slow", "app", slow)))

    async def running() -> int:
        rows = await fetch(
            jobs,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active'"
            " AND application_name = 'taskmedic-healer' AND query = %s",
            slow,
        )
        return int(rows[0]["n"])

    await until(running, 20, "the statement to run")
    await fetch(
        jobs, "UPDATE actions SET cancel_requested_at = now() WHERE id = %s RETURNING id", action_id
    )
    await fetch(jobs, "SELECT pg_notify('taskmedic_cancel', %s)", str(action_id))
    row = await state_in(jobs, action_id, "cancelled", "failed", "succeeded", timeout=10)
    assert row["state"] == "cancelled"
    assert await running() == 0
    assert (await statuses(jobs))[1] == "processing"
