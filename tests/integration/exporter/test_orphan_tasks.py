"""orphan_tasks with no worker to ask: a real Redis broker and real PostgreSQL; a queued
task is not lost, and a broker that is down exports no count."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from celery import Celery

from exporter.runner import Runner
from exporter.web import RUNNER, create_app
from tests.services import RedisTarget, wait_for
from tests.support.celery_helpers import Monitors, TcpLink
from tests.support.exporter_helpers import (
    config_from,
    parse_metrics,
    pg_exec,
    until,
    value,
)
from tests.support.orphan_tasks import add_row, collect_twice, config_data, lost_finished


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


async def metrics(client: TestClient[Any, Any]) -> dict[Any, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_metrics(await resp.text())


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
