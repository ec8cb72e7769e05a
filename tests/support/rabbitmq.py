"""The RabbitMQ tests' broker (skipped outside CI when it is not running, failing inside CI)
and a queue of each test's own (loaded by tests/conftest.py for every tier)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kombu.connection import Connection

from tests.services import Worker, need_or_skip, reachable

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def amqp_url() -> str:
    need_or_skip(reachable("127.0.0.1", 5672), "RabbitMQ")
    return AMQP_URL


@pytest.fixture
def queue(amqp_url: str) -> Iterator[str]:
    """A queue name of this test's own on the shared RabbitMQ, deleted afterwards."""
    name = f"taskmedic-test-{uuid.uuid4().hex[:8]}"
    yield name
    with Connection(amqp_url) as conn:
        conn.default_channel.queue_delete(name)


@pytest.fixture
def amqp_workers() -> Iterator[list[Worker]]:
    """Workers on RabbitMQ a test starts; killed after it, as the `workers` fixture does."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()
