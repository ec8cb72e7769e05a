"""orphan_tasks and the Celery gauges with real Celery worker processes, a real Redis broker and
result backend, the real ClusterMonitor and real PostgreSQL, read from the exporter's /metrics."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from celery import Celery

from exporter.runner import Runner
from exporter.web import RUNNER, create_app
from tests.celery_app import make_app
from tests.exporter.celery_helpers import Monitors, TcpLink
from tests.exporter.helpers import config_from, parse_metrics, pg_exec, registry_of, until, value
from tests.services import RedisTarget, Worker, start_worker, wait_for

QUERY = "SELECT id, celery_task_id, updated_at FROM timeline WHERE status = 'processing'"


@pytest.fixture
def client_app(broker_url: str) -> Iterator[Celery]:
    """The user's application: sends tasks the way it always does."""
    app = make_app(broker_url)
    yield app
    app.close()


@pytest.fixture
def timeline(pg_dsn: str) -> str:
    pg_exec(
        pg_dsn,
        "CREATE TABLE timeline (id int PRIMARY KEY, status text, celery_task_id text, "
        "updated_at timestamptz NOT NULL DEFAULT now())",
    )
    return pg_dsn


def add_row(dsn: str, key: int, task_id: str, age: str = "1 hour") -> None:
    pg_exec(
        dsn,
        "INSERT INTO timeline VALUES (%s, 'processing', %s, now() - %s::interval)",
        (key, task_id, age),
    )


def config_data(dsn: str, broker: str, *, grace: str = "1m", **exporter: Any) -> dict[str, Any]:
    return {
        "databases": {"app": {"dsn": dsn}},
        "celery": {"main": {"broker": broker, "backend": broker, "inspect_timeout": "0.5s"}},
        "exporter": {"interval": "0.5s", "timeout": "5s", **exporter},
        "checks": [
            {
                "name": "timelines",
                "type": "orphan_tasks",
                "database": "app",
                "celery": "main",
                "grace": grace,
                "query": QUERY,
            }
        ],
    }


def lost_finished(runner: Runner) -> tuple[float | None, float | None]:
    registry = registry_of(runner)
    return tuple(  # type: ignore[return-value]
        registry.get_sample_value("taskmedic_orphan_tasks", {"check": "timelines", "reason": r})
        for r in ("lost", "finished")
    )


async def collect_twice(runner: Runner) -> None:
    await runner.collect("timelines")
    await runner.collect("timelines")
    state = runner.state("timelines")
    assert state.up, state.error


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


async def test_a_queued_task_with_no_worker_yet_is_not_lost(
    timeline: str, broker_url: str, tmp_path: Path, monitors: Monitors, client_app: Celery
) -> None:
    """No worker consumes the queue (all down, or not started yet): the task waits in Redis,
    so its row is not an orphan."""
    job = client_app.send_task("tests.sleep", args=[1])
    add_row(timeline, 1, job.id)
    monitor = monitors(broker_url, backend=broker_url)
    runner = Runner(
        config_from(tmp_path, config_data(timeline, broker_url)), monitors={"main": monitor}
    )
    try:
        wait_for(lambda: monitor.snapshot().broker_up, timeout=10, what="the event stream")
        await collect_twice(runner)
        assert lost_finished(runner) == (0, 0)
        await collect_twice(runner)
        assert lost_finished(runner) == (0, 0)
    finally:
        await runner.stop()


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
    assert age is not None and age >= 2.0
    assert job.state == "STARTED"  # the backend still claims it runs: only we know better


def upstream_of(broker_url: str, redis_target: RedisTarget) -> Any:
    def connect() -> socket.socket:
        if redis_target.socket_path:
            s = socket.socket(socket.AF_UNIX)
            s.connect(redis_target.socket_path)
            return s
        host_port = broker_url.split("://", 1)[1].split("@")[-1].split("/")[0]
        host, port = host_port.rsplit(":", 1)
        return socket.create_connection((host, int(port)))

    return connect


async def test_broker_down_gives_check_up_0_and_no_count_while_other_checks_export(
    timeline: str,
    broker_url: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    """The exporter reaches the broker through a TCP hop we can cut. With the broker gone the
    orphan check exports no count and check_up 0 (never a false 0 or a stale count), broker_up
    is 0, and a database-only check goes on exporting; when the broker is back, so is the count."""
    link = TcpLink(upstream_of(broker_url, redis_target))
    link.restore()
    try:
        add_row(timeline, 1, "never-sent-task-id")
        pg_exec(timeline, "CREATE TABLE cache (k int, at timestamptz)")
        pg_exec(timeline, "INSERT INTO cache VALUES (1, now() - interval '1 hour')")
        via_link = f"redis://127.0.0.1:{link.port}/{redis_target.db}"
        data = config_data(timeline, via_link, grace="1s")
        data["checks"].append(
            {
                "name": "cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": "SELECT k, at FROM cache",
            }
        )
        client = await aiohttp_client(create_app(config_from(tmp_path, data)))
        lost = ("taskmedic_orphan_tasks", (("check", "timelines"), ("reason", "lost")))

        async def counted() -> dict[Any, float] | None:
            m = await metrics(client)
            return m if m.get(lost) == 1 else None

        await until(counted, 20, "the never-sent task to count as lost")

        link.cut()

        async def blind() -> dict[Any, float] | None:
            m = await metrics(client)
            return m if value(m, "taskmedic_check_up", check="timelines") == 0 else None

        m = await until(blind, 20, "check_up of the orphan check to drop")
        assert m.get(lost) is None
        assert value(m, "taskmedic_orphan_tasks", check="timelines", reason="finished") is None
        assert value(m, "taskmedic_orphan_oldest_age_seconds", check="timelines") is None
        assert value(m, "taskmedic_celery_broker_up", cluster="main") == 0
        runner: Runner = client.app[RUNNER]
        seen = runner.state("cache").collections
        await until(lambda: runner.state("cache").collections > seen + 1, 10, "cache collections")
        m = await metrics(client)
        assert value(m, "taskmedic_check_up", check="cache") == 1
        assert value(m, "taskmedic_stale_rows", check="cache") == 1
        assert m.get(lost) is None

        link.restore()
        await until(counted, 30, "the count to come back with the broker")
        await client.close()  # stop the exporter while its broker is reachable
    finally:
        link.cut()
