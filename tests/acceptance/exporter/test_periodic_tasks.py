"""Periodic tasks from real `celery beat` and worker processes: a stopped beat, a task that
keeps failing, and workers started without -E."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exporter.celery_state import ClusterMonitor, TaskStatus
from exporter.web import create_app
from tests.celery_app import make_app
from tests.services import Worker, start_beat, start_worker, wait_for
from tests.support.celery_helpers import Monitors
from tests.support.exporter_helpers import config_from, parse_metrics, until, value


def task_status(monitor: ClusterMonitor, name: str) -> TaskStatus | None:
    for t in monitor.snapshot().tasks:
        if t.name == name:
            return t
    return None


def test_a_stopped_beat_makes_its_task_overdue_within_expect_every_plus_grace(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """While beat sends the task every second it succeeds on time; once beat is killed the
    task reads overdue no later than expect_every + grace after its last success."""
    every, grace = 2.0, 1.0
    monitor = monitors(broker_url, tasks={"tests.add": {"expect_every": every, "grace": grace}})
    workers.append(start_worker(broker_url, tmp_path))
    beat = start_beat(broker_url, tmp_path, "tests.add", 1.0)
    workers.append(beat)

    first = wait_for(
        lambda: (t := task_status(monitor, "tests.add")) and t.last_succeeded and t,
        timeout=20,
        what="a success of the beat-sent task",
    )
    assert first.last_received is not None
    assert first.last_started is not None
    wait_for(
        lambda: (
            (t := task_status(monitor, "tests.add"))
            and t.last_succeeded
            and t.last_succeeded > (first.last_succeeded or 0)
        ),
        timeout=10,
        what="a second success",
    )
    assert not task_status(monitor, "tests.add").overdue  # type: ignore[union-attr]

    beat.kill()
    overdue = wait_for(
        lambda: (t := task_status(monitor, "tests.add")) and t.overdue and t,
        timeout=every + grace + 5,
        what="the task to read overdue after beat was killed",
    )
    detected = time.time()
    assert overdue.last_succeeded is not None
    # On time until expect_every + grace after the last success, overdue right after.
    assert detected - overdue.last_succeeded <= every + grace + 1.0


def test_a_task_that_keeps_failing_is_overdue_although_beat_runs(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    every = 2.0
    monitor = monitors(broker_url, tasks={"tests.fail": {"expect_every": every, "grace": 0.5}})
    workers.append(start_worker(broker_url, tmp_path))
    workers.append(start_beat(broker_url, tmp_path, "tests.fail", 0.5))
    failing = wait_for(
        lambda: (t := task_status(monitor, "tests.fail")) and t.last_failed and t.overdue and t,
        timeout=every + 10,
        what="the failing task to read overdue",
    )
    assert failing.last_succeeded is None


def test_workers_without_task_events_are_asked_to_send_them_when_enabled(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """A worker started without -E sends no task events: the cluster counts none while tasks
    run; with enable_events the exporter asks it (Celery's enable_events command) and they
    come."""
    worker = start_worker(broker_url, tmp_path, events=False)
    workers.append(worker)
    silent = monitors(broker_url, tasks={"tests.add": {"expect_every": 60}})
    wait_for(lambda: silent.snapshot().broker_up, timeout=10, what="the event stream")
    workers.append(start_beat(broker_url, tmp_path, "tests.add", 0.5))
    # The worker's own log says the tasks run; the event stream says nothing of them.
    wait_for(
        lambda: worker.output().count("succeeded in") >= 3,
        timeout=20,
        what="three tasks run by the worker",
    )
    assert silent.snapshot().task_events == 0
    assert task_status(silent, "tests.add").last_succeeded is None  # type: ignore[union-attr]

    asking = monitors(broker_url, tasks={"tests.add": {"expect_every": 60}}, enable_events=True)
    seen = wait_for(
        lambda: (t := task_status(asking, "tests.add")) and t.last_succeeded and t,
        timeout=15,
        what="task events after enable_events",
    )
    assert seen.last_succeeded is not None
    assert asking.snapshot().task_events > 0


async def test_metrics_and_landing_page_show_declared_tasks_and_only_those(
    broker_url: str, tmp_path: Path, workers: list[Worker], aiohttp_client: Any
) -> None:
    """The exporter over HTTP: a declared task gets its times and overdue 0 while beat runs
    it; a task nobody declared (tests.fail, sent alongside) gets no series at all."""
    data = {
        "celery": {"main": {"broker": broker_url}},
        "periodic_tasks": [{"cluster": "main", "task": "tests.add", "expect_every": "1m"}],
    }
    workers.append(start_worker(broker_url, tmp_path))
    workers.append(start_beat(broker_url, tmp_path, "tests.add", 0.5))
    client = await aiohttp_client(create_app(config_from(tmp_path, data)))
    labels = {"cluster": "main", "task": "tests.add"}

    async def metrics() -> dict[Any, float]:
        resp = await client.get("/metrics")
        return parse_metrics(await resp.text())

    async def succeeded() -> bool:
        m = await metrics()
        return (
            value(m, "taskmedic_celery_task_last_succeeded_timestamp_seconds", **labels) or 0
        ) > 0

    sender = make_app(broker_url)
    sender.send_task("tests.fail", args=["undeclared"])
    sender.close()
    await until(succeeded, 20, "the declared task's last success on /metrics")
    m = await metrics()
    assert value(m, "taskmedic_celery_task_overdue", **labels) == 0
    assert value(m, "taskmedic_celery_task_expected_interval_seconds", **labels) == 60
    assert (value(m, "taskmedic_celery_task_events_total", cluster="main") or 0) > 0
    tasks_seen = {dict(k[1]).get("task") for k in m if k[0].startswith("taskmedic_celery_task_")}
    assert tasks_seen <= {"tests.add", None}
    page = await (await client.get("/")).text()
    assert "Periodic tasks" in page
    assert "tests.add" in page
    assert "on time" in page
