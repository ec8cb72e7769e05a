"""A journal that refuses a write: the value is made storable, or the attempt ends `failed`
with the refusal as its reason; a step that was done stays done and never runs again."""

from __future__ import annotations

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
)


@pytest.fixture
async def counter(journal_dsn: str) -> str:
    """A user table `counter` with one row at 0 (in the journal's database, for brevity)."""
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
        await conn.execute("INSERT INTO counter VALUES (1, 0)")
    return journal_dsn


async def count_of(dsn: str) -> int:
    (row,) = await fetch(dsn, "SELECT n FROM counter WHERE id = 1")
    return int(row["n"])


async def test_a_step_result_holding_nul_is_stored_escaped_and_the_step_runs_once(
    counter: str, executors: StartExecutor
) -> None:
    """jsonb cannot hold NUL: a RETURNING bytea `a\\0b` is recorded as `a\\u0000b`, the action
    succeeds, and the committed statement ran exactly once (even with on_interrupt: retry)."""
    ex = await executors(app_config(counter), lease=1.0)
    p = plan(
        sql(
            "bump",
            "app",
            "UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING decode('610062', 'hex')",
        ),
        on_interrupt="retry",
    )
    action_id = await insert_action(counter, p)
    row = await state_in(counter, action_id, "succeeded", "failed")
    assert row["state"] == "succeeded", row["reason"]
    assert await count_of(counter) == 1
    (step,) = await steps(counter, action_id)
    assert step["state"] == "succeeded"
    assert step["result"]["returned"] == ["a\\u0000b"]
    assert await ex.sweep() == []
    assert await count_of(counter) == 1


REFUSE = """
CREATE FUNCTION refuse_marker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.result -> 'returned' @> '["refuse-me"]'::jsonb THEN
        RAISE EXCEPTION 'steps may not hold the marker';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_marker BEFORE UPDATE ON steps
    FOR EACH ROW EXECUTE FUNCTION refuse_marker();
"""


async def test_a_refused_write_fails_the_action_and_never_reruns_the_done_step(
    counter: str, executors: StartExecutor
) -> None:
    """Any journal error other than a lost connection ends the attempt: `failed`, its reason
    naming the error and what was being written; the committed step stays `succeeded`, the
    steps after it are not run, nothing stays `running`, and no retry runs the step again."""
    async with await psycopg.AsyncConnection.connect(counter, autocommit=True) as conn:
        await conn.execute(REFUSE)
    ex = await executors(app_config(counter), lease=1.0)
    p = plan(
        sql("bump", "app", "UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING 'refuse-me'"),
        sh("after", "true"),
        on_interrupt="retry",
    )
    action_id = await insert_action(counter, p)
    row = await state_in(counter, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    assert "RaiseException" in row["reason"]
    assert "steps may not hold the marker" in row["reason"]
    assert "step 1 'bump'" in row["reason"]
    assert row["lease_expires_at"] is None
    first, second = await steps(counter, action_id)
    assert first["state"] == "succeeded"
    assert "RaiseException" in first["result"]["journal_error"]
    assert second["state"] == "skipped"
    assert await ex.sweep() == []
    assert (await state_in(counter, action_id, "failed"))["attempt"] == 1
    assert await count_of(counter) == 1
