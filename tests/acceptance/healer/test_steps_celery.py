"""The `celery` step against a real broker and a real worker process of tests/celery_app.py."""

from __future__ import annotations

from pathlib import Path

from tests.services import Worker, start_worker
from tests.support.celery_helpers import celery_config, task
from tests.support.journal_helpers import (
    StartExecutor,
    insert_action,
    output,
    plan,
    state_in,
    steps,
    until,
)


async def test_a_celery_step_sends_a_real_task_and_waits_for_its_result(
    journal_dsn: str,
    executors: StartExecutor,
    broker_url: str,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    workers.append(start_worker(broker_url, tmp_path))
    await executors(celery_config(broker_url))
    action_id = await insert_action(journal_dsn, plan(task("tests.add", 2, 3, wait=30)))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
    assert row["state"] == "succeeded", row["reason"]
    (step,) = await steps(journal_dsn, action_id)
    assert step["result"]["state"] == "SUCCESS"
    assert step["result"]["result"] == "5"
    assert len(step["result"]["task_id"]) == 36
    log = (await output(journal_dsn, action_id, "system")).decode()
    assert f"sent tests.add to main as {step['result']['task_id']}" in log


async def test_a_task_that_fails_fails_the_step_with_its_error(
    journal_dsn: str,
    executors: StartExecutor,
    broker_url: str,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    workers.append(start_worker(broker_url, tmp_path))
    await executors(celery_config(broker_url))
    action_id = await insert_action(
        journal_dsn, plan(task("tests.fail", "cache rebuild broke", wait=30))
    )
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
    assert row["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert step["result"]["state"] == "FAILURE"
    assert "ended FAILURE" in step["error"]
    assert "cache rebuild broke" in step["error"]
    assert "RuntimeError" in step["result"]["traceback"]


async def test_without_wait_the_task_is_sent_and_runs(
    journal_dsn: str,
    executors: StartExecutor,
    broker_url: str,
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    workers.append(start_worker(broker_url, tmp_path))
    await executors(celery_config(broker_url))
    touched = tmp_path / "touched"
    action_id = await insert_action(journal_dsn, plan(task("tests.touch", str(touched), "hi")))
    await state_in(journal_dsn, action_id, "succeeded")
    (step,) = await steps(journal_dsn, action_id)
    assert step["result"]["state"] == "SENT"
    assert await until(lambda: _read(touched), 30, "the task to run") == "hi\n"


async def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
