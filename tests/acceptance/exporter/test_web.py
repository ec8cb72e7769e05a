"""The exporter's /metrics follows each collection and a real worker's death."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.web import create_app
from tests.services import RedisTarget
from tests.support.celery_helpers import redis_link
from tests.support.exporter_helpers import config_from, parse_metrics, pg_exec, until, value


async def test_metrics_page_follows_each_collection_and_worker_death(
    pg_dsn: str, broker_url: str, tmp_path: Path, workers: list[Any], aiohttp_client: Any
) -> None:
    """/metrics serves a page kept between scrapes, yet shows every new collection and a
    worker's death (judged at scrape time) as soon as they happen, gzipped or not."""
    from tests.services import start_worker

    pg_exec(pg_dsn, "CREATE TABLE cache (k int, at timestamptz)")
    pg_exec(pg_dsn, "INSERT INTO cache VALUES (1, now() - interval '1 hour')")
    data = {
        "databases": {"app": {"dsn": pg_dsn}},
        "celery": {"main": {"broker": broker_url}},
        "exporter": {"interval": "1s"},
        "checks": [
            {
                "name": "cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": "SELECT k, at FROM cache",
            }
        ],
    }
    worker = start_worker(broker_url, tmp_path, heartbeat=1)
    workers.append(worker)
    client = await aiohttp_client(create_app(config_from(tmp_path, data)))

    async def scrape(gzip: bool) -> dict[Any, float]:
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 200
        assert (resp.headers.get("Content-Encoding") == "gzip") is gzip
        return parse_metrics(await resp.text())

    async def both(name: str, want: float, **labels: str) -> bool:
        seen = [value(await scrape(z), name, **labels) for z in (False, True)]
        return seen == [want, want]

    await until(lambda: both("taskmedic_stale_rows", 1, check="cache"), 15, "one stale row")
    up = {"cluster": "main", "worker": worker.hostname}
    await until(lambda: both("taskmedic_celery_worker_up", 1, **up), 15, "worker up")
    pg_exec(pg_dsn, "UPDATE cache SET at = now()")
    await until(lambda: both("taskmedic_stale_rows", 0, check="cache"), 15, "the row refreshed")
    worker.kill()
    await until(lambda: both("taskmedic_celery_worker_up", 0, **up), 10, "worker_up 0")
    assert value(await scrape(False), "taskmedic_celery_worker_crashed", **up) == 1


async def test_worker_series_are_absent_while_the_exporter_cannot_see_the_broker(
    broker_url: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    workers: list[Any],
    aiohttp_client: Any,
) -> None:
    """/ and /metrics say which method tells a killed worker (the Redis broker signal while
    it works). When only the exporter's own broker connection is cut, the live worker's
    series disappear (unknown) instead of reading 0, the method falls back to the heartbeat
    rule, and both come back with the connection."""
    from tests.services import start_worker

    link = redis_link(redis_target)
    try:
        proxied = f"redis://127.0.0.1:{link.port}/{redis_target.db}"
        data = {"celery": {"main": {"broker": proxied}}, "exporter": {"interval": "1s"}}
        worker = start_worker(broker_url, tmp_path, heartbeat=1)
        workers.append(worker)
        client = await aiohttp_client(create_app(config_from(tmp_path, data)))

        async def metrics() -> dict[Any, float]:
            return parse_metrics(await (await client.get("/metrics")).text())

        up = {"cluster": "main", "worker": worker.hostname}
        signal = {"cluster": "main", "method": "broker_signal"}
        rule = {"cluster": "main", "method": "heartbeat_rule"}

        async def watched() -> bool:
            m = await metrics()
            return value(m, "taskmedic_celery_worker_up", **up) == 1 and (
                value(m, "taskmedic_celery_liveness_method", **signal) == 1
            )

        await until(watched, 15, "worker up, watched by the broker signal")
        page = await (await client.get("/")).text()
        assert "broker signal (redis client list)" in page
        m = await metrics()
        assert value(m, "taskmedic_celery_workers_dropped_total", cluster="main") == 0

        link.cut()

        async def unknown() -> bool:
            m = await metrics()
            assert value(m, "taskmedic_celery_worker_up", **up) != 0, "a live worker read 0"
            # The collection and the broker-signal thread each notice on their own time.
            return (
                value(m, "taskmedic_celery_broker_up", cluster="main") == 0
                and value(m, "taskmedic_celery_worker_up", **up) is None
                and value(m, "taskmedic_celery_liveness_method", **rule) == 1
            )

        await until(unknown, 15, "the worker's series gone with the broker, the rule in use")
        m = await metrics()
        assert value(m, "taskmedic_celery_workers", cluster="main", state="online") is None
        page = await (await client.get("/")).text()
        assert "unknown while the broker cannot be reached" in page
        assert "heartbeat rule" in page

        link.restore()
        await until(watched, 20, "worker up again, watched by the broker signal")
    finally:
        link.cut()
