"""The exporter's /metrics follows each collection and a real worker's death."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.web import create_app
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
