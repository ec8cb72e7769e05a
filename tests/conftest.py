"""Fixtures that start real services; see tests/services.py for where each comes from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import PostgresServer, RedisTarget, Worker, reserve_redis


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
    """Start workers with `workers.append(start_worker(broker_url, tmp_path))`; all stop after."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()
