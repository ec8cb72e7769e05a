"""orphan_tasks and the Celery gauges with real Celery worker processes, a real Redis broker and
result backend, the real ClusterMonitor and real PostgreSQL, read from the exporter's /metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from celery import Celery

from exporter.runner import Runner
from exporter.web import RUNNER, create_app
from tests.services import Worker, start_worker, wait_for
from tests.support.celery_helpers import Monitors
from tests.support.exporter_helpers import (
    config_from,
    parse_metrics,
    until,
    value,
)
from tests.support.orphan_tasks import add_row, collect_twice, config_data, lost_finished


async def test_a_task_running_on_a_live_worker_is_never_an_orphan(
    timeline: str,
    broker_url: str,
    tmp_path: Path,
    workers: list[Worker],
    monitors: Monitors,
    client_app: Celery,
) -> None:
    """A long import on a live worker, its row long past grace: never counted."""
    workers.append(start_worker(broker_url, tmp_path))
    job = client_app.send_task("tests.sleep", args=[60])
    wait_for(lambda: job.state == "STARTED", timeout=15, what="the task to start")
    add_row(timeline, 1, job.id)
    monitor = monitors(broker_url, backend=broker_url)
    runner = Runner(
        config_from(tmp_path, config_data(timeline, broker_url)), monitors={"main": monitor}
    )
    try:
        wait_for(lambda: monitor.snapshot().broker_up, timeout=10, what="the event stream")
        for _ in range(2):
            await collect_twice(runner)
            assert lost_finished(runner) == (0, 0)
    finally:
        await runner.stop()
        workers[0].kill()  # do not wait out the minute-long task at teardown


async def test_a_finished_task_whose_row_still_says_processing_is_finished(
    timeline: str,
    broker_url: str,
    tmp_path: Path,
    workers: list[Worker],
    monitors: Monitors,
    client_app: Celery,
) -> None:
    """The task succeeded (or failed) but the app never updated its row: reason finished,
    with the row key and task id in the findings."""
    workers.append(start_worker(broker_url, tmp_path))
    ok = client_app.send_task("tests.add", args=[2, 3])
    bad = client_app.send_task("tests.fail", args=["boom"])
    assert ok.get(timeout=15) == 5
    wait_for(lambda: bad.state == "FAILURE", timeout=15, what="the failing task to fail")
    add_row(timeline, 1, ok.id)
    add_row(timeline, 2, bad.id)
    monitor = monitors(broker_url, backend=broker_url)
    runner = Runner(
        config_from(tmp_path, config_data(timeline, broker_url)), monitors={"main": monitor}
    )
    try:
        wait_for(lambda: monitor.snapshot().broker_up, timeout=10, what="the event stream")
        await runner.collect("timelines")
        assert lost_finished(runner) == (None, None)  # one observation: not known yet
        await runner.collect("timelines")
        assert lost_finished(runner) == (0, 2)
        outcome = runner.state("timelines").outcome
        assert outcome is not None
        assert {(f.key, f.task_id, f.reason) for f in outcome.findings} == {
            (1, ok.id, "finished"),
            (2, bad.id, "finished"),
        }
    finally:
        await runner.stop()


async def metrics(client: TestClient[Any, Any]) -> dict[Any, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_metrics(await resp.text())


async def test_a_worker_killed_mid_task_turns_its_row_into_a_lost_orphan(
    timeline: str,
    broker_url: str,
    tmp_path: Path,
    workers: list[Worker],
    client_app: Celery,
    aiohttp_client: Any,
) -> None:
    """The whole exporter on a live cluster: while the worker runs the import, the row is no
    orphan however long we watch; after kill -9 the worker reads down within a few seconds and
    the row becomes an orphan (reason lost) after its grace and two collections."""
    worker = start_worker(broker_url, tmp_path)
    workers.append(worker)
    job = client_app.send_task("tests.sleep", args=[120])
    wait_for(lambda: job.state == "STARTED", timeout=15, what="the task to start")
    add_row(timeline, 1, job.id, age="0 seconds")
    config = config_from(tmp_path, config_data(timeline, broker_url, grace="2s"))
    client = await aiohttp_client(create_app(config))
    runner: Runner = client.app[RUNNER]
    lost = ("taskmedic_orphan_tasks", (("check", "timelines"), ("reason", "lost")))
    up = ("taskmedic_celery_worker_up", (("cluster", "main"), ("worker", worker.hostname)))

    # Past grace, several collections, the task alive on its worker: zero, not absent.
    grace_over = time.monotonic() + 2.0
    await until(lambda: time.monotonic() > grace_over, 5, "the grace to pass")
    seen = runner.state("timelines").collections
    await until(lambda: runner.state("timelines").collections >= seen + 3, 20, "3 collections")
    m = await metrics(client)
    assert m[lost] == 0
    assert m[up] == 1
    assert value(m, "taskmedic_celery_workers", cluster="main", state="online") == 1

    worker.kill()

    async def worker_down() -> dict[Any, float] | None:
        m = await metrics(client)
        return m if m.get(up) == 0 else None

    m = await until(worker_down, 15, "worker_up to drop to 0")
    assert value(m, "taskmedic_celery_workers", cluster="main", state="offline") == 1

    async def orphaned() -> dict[Any, float] | None:
        m = await metrics(client)
        return m if m.get(lost) == 1 else None

    m = await until(orphaned, 30, "the row to become a lost orphan")
    assert value(m, "taskmedic_orphan_tasks", check="timelines", reason="finished") == 0
    age = value(m, "taskmedic_orphan_oldest_age_seconds", check="timelines")
    assert age is not None
    assert age >= 2.0
    assert job.state == "STARTED"  # the backend still claims it runs: only we know better


async def test_the_task_of_a_worker_seen_killed_is_an_orphan_before_the_next_collection(
    timeline: str,
    broker_url: str,
    tmp_path: Path,
    workers: list[Worker],
    client_app: Celery,
    aiohttp_client: Any,
) -> None:
    """Collections a minute apart: once the broker signal confirms the worker dead, the check
    looks at once (twice in a row, the two observations an orphan needs), so the row past its
    grace reads as a lost orphan long before the check's next turn."""
    interval = 60.0
    worker = start_worker(broker_url, tmp_path, heartbeat=5)
    workers.append(worker)
    job = client_app.send_task("tests.sleep", args=[120])
    wait_for(lambda: job.state == "STARTED", timeout=15, what="the task to start")
    add_row(timeline, 1, job.id)
    config = config_from(tmp_path, config_data(timeline, broker_url, interval=f"{interval}s"))
    client = await aiohttp_client(create_app(config))
    runner: Runner = client.app[RUNNER]
    up = ("taskmedic_celery_worker_up", (("cluster", "main"), ("worker", worker.hostname)))
    lost = ("taskmedic_orphan_tasks", (("check", "timelines"), ("reason", "lost")))

    async def watched() -> bool:
        return (await metrics(client)).get(up) == 1 and runner.state("timelines").up is True

    await until(watched, 20, "the worker online and the check's first collection")
    first = runner.state("timelines").last_attempt
    assert first is not None
    assert runner.state("timelines").collections == 1

    worker.kill()

    async def orphaned() -> bool:
        return (await metrics(client)).get(lost) == 1

    await until(orphaned, 30, "the row to become a lost orphan")
    assert time.time() < first + interval, "found only by the check's schedule"
    assert job.state == "STARTED"
