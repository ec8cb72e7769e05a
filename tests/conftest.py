"""Fixtures that start real services, shared by the tiers; see tests/services.py for where
each comes from.

The folder is the tier: tests/unit (pure Python, no socket, no process: its conftest refuses
them), tests/integration (real PostgreSQL, MariaDB, Redis, RabbitMQ, in-process servers),
tests/acceptance (spawned processes: Celery workers, the healer and exporter, the demo, a
browser, Prometheus and Alertmanager)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.config import Config
from healer.executor import Executor
from healer.journal.migrate import upgrade
from healer.metrics import HealerMetrics
from tests.services import PostgresServer, RedisTarget, Worker, reserve_redis
from tests.support.journal_helpers import StartExecutor

pytest_plugins = ["tests.support.exporter_fixtures", "tests.support.rabbitmq"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    name, dsn = pg_server.create_database()
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def journal_template(pg_server: PostgresServer) -> Iterator[str]:
    """A database migrated once per run, cloned by `journal_dsn`; dropped at the end.

    Its name is random, so concurrent runs on one server never share it, and it refuses
    connections once built, so nothing can block a clone."""
    name, dsn = pg_server.create_database()
    try:
        asyncio.run(upgrade(dsn))
        pg_server.freeze_template(name)
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def journal_dsn(pg_server: PostgresServer, journal_template: str) -> Iterator[str]:
    """A fresh journal (a migrated database of this test's own); its DSN.

    Dropped at teardown: a test whose app runs its executor names `journal_dsn` before
    `aiohttp_client`, so that the app stops before its journal goes (an executor that finds
    its journal gone keeps retrying its claim for the journal's retry window)."""
    name, dsn = pg_server.create_database(template=journal_template)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
async def journal_conn(journal_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to this test's fresh journal."""
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def executors(journal_dsn: str) -> AsyncIterator[StartExecutor]:
    """`await executors(config=None, **kw)` starts an Executor on the journal; all stop after."""
    started: list[Executor] = []

    async def start(config: Config | None = None, **kw: Any) -> Executor:
        kw.setdefault("poll_interval", 0.1)
        kw.setdefault("lease", 5.0)
        metrics = kw.pop("metrics", None) or HealerMetrics()
        ex = Executor(journal_dsn, config or Config(), metrics, **kw)
        await ex.start()
        started.append(ex)
        return ex

    yield start
    for ex in started:
        await ex.stop(grace=0)


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisTarget]:
    target, shutdown = reserve_redis()
    yield target
    target.close()
    shutdown()


@pytest.fixture
def redis_target(redis_session: RedisTarget) -> RedisTarget:
    """This run's Redis database, emptied before the test."""
    redis_session.client().flushdb()
    return redis_session


@pytest.fixture
def broker_url(redis_target: RedisTarget) -> str:
    return redis_target.url


@pytest.fixture
def workers(broker_url: str, tmp_path: Path) -> Iterator[list[Worker]]:
    """Start workers with `workers.append(start_worker(broker_url, tmp_path))`; all are killed
    after the test: a warm shutdown would wait for the tasks a test left running, and a test
    that asserts on a clean stop calls `Worker.stop()` itself."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.kill()
