"""/readyz: cheap for the journal whatever the health checks' rate, and false while a
background loop of the process is down, until it runs again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient

from healer import appkeys
from healer.app import create_app
from healer.metrics import HealerMetrics
from tests.support.ingest_helpers import config_for

Client = TestClient[Any, Any]


async def ready(client: Client) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/readyz")
    return resp.status, await resp.json()


async def until_ready(client: Client, want: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await ready(client)
        if status == want:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"/readyz stayed {status}: {body}"
        await asyncio.sleep(0.05)


async def test_a_flood_of_health_checks_takes_no_connection_ingest_needs(
    journal_dsn: str, aiohttp_client: Any, tmp_path: Path
) -> None:
    app = create_app(config_for(tmp_path, journal_dsn), dsn=journal_dsn, run_executor=False)
    client: Client = await aiohttp_client(app)
    pool = app[appkeys.JOURNAL_POOL]
    before = pool.get_stats().get("requests_num", 0)
    answers = await asyncio.gather(*(ready(client) for _ in range(200)))
    assert {status for status, _ in answers} == {200}
    assert pool.get_stats().get("requests_num", 0) == before


async def test_a_loop_that_fails_is_counted_not_ready_and_started_again(
    journal_dsn: str, aiohttp_client: Any, tmp_path: Path
) -> None:
    """The journal refuses what the executor's loops ask (here its actions table is renamed
    away): the failures are logged and counted, /readyz says which loop is down, and once the
    journal answers again the loops run again and /readyz is true."""
    metrics = HealerMetrics()
    app = create_app(config_for(tmp_path, journal_dsn), dsn=journal_dsn, metrics=metrics)
    client: Client = await aiohttp_client(app)
    await until_ready(client, 200)
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        await conn.execute("ALTER TABLE actions RENAME TO actions_away")
        try:
            body = await until_ready(client, 503)
            assert "loop executor-" in body["reason"]
            # Each loop that reads the table fails in turn; the sweep is one of them.
            sweep = {"loop": "executor-sweep"}
            failures = "taskmedic_healer_loop_failures_total"
            deadline = asyncio.get_running_loop().time() + 30
            while not metrics.registry.get_sample_value(failures, sweep):
                assert asyncio.get_running_loop().time() < deadline, "the sweep never failed"
                await asyncio.sleep(0.05)
        finally:
            await conn.execute("ALTER TABLE actions_away RENAME TO actions")
    await until_ready(client, 200)
    assert metrics.registry.get_sample_value("taskmedic_healer_loop_up", sweep) == 1
