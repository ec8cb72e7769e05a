"""The `celery` step against a real broker and a real worker process of tests/celery_app.py."""

from __future__ import annotations

from tests.services import RedisTarget
from tests.support.celery_helpers import celery_config, task
from tests.support.journal_helpers import (
    StartExecutor,
    insert_action,
    plan,
    state_in,
    steps,
)


async def test_no_result_within_wait_fails_the_step(
    journal_dsn: str, executors: StartExecutor, broker_url: str
) -> None:
    """No worker consumes the queue: the wait runs out and says which state it saw."""
    await executors(celery_config(broker_url))
    action_id = await insert_action(journal_dsn, plan(task("tests.sleep", 1, wait=0.5)))
    assert (await state_in(journal_dsn, action_id, "succeeded", "failed"))["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert step["error"] == "no result within 0.5s (state PENDING)"


async def test_dry_run_sends_no_task(
    journal_dsn: str, executors: StartExecutor, broker_url: str, redis_target: RedisTarget
) -> None:
    await executors(celery_config(broker_url))
    action_id = await insert_action(journal_dsn, plan(task("tests.add", 1, 1), dry_run=True))
    assert (await state_in(journal_dsn, action_id, "skipped", "failed"))["state"] == "skipped"
    (step,) = await steps(journal_dsn, action_id)
    assert step["state"] == "skipped"
    assert step["result"]["dry_run"] is True
    assert redis_target.client().llen("celery") == 0  # nothing reached the broker queue


async def test_an_undefined_cluster_fails_the_step_with_its_name(
    journal_dsn: str, executors: StartExecutor
) -> None:
    await executors()
    action_id = await insert_action(journal_dsn, plan(task("tests.add", 1, 1, app="nowhere")))
    assert (await state_in(journal_dsn, action_id, "succeeded", "failed"))["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert step["error"] == "celery cluster 'nowhere' is not defined under celery"
