"""ClusterMonitor on RabbitMQ without workers: the honest limit of a broker whose queues
cannot be read without consuming them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu.connection import Connection

from exporter.celery_state import TaskTrace
from tests.celery_app import make_app
from tests.services import wait_for
from tests.support.celery_helpers import Monitors

pytestmark = pytest.mark.rabbitmq


def message_count(url: str, queue: str) -> int:
    with Connection(url) as conn:
        _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
        return int(count)


@pytest.fixture
def client(amqp_url: str) -> Iterator[Celery]:
    app = make_app(amqp_url)
    yield app
    app.close()


def test_task_waiting_in_an_unreadable_queue_is_unknown_not_lost(
    amqp_url: str, queue: str, monitors: Monitors, client: Celery
) -> None:
    """AMQP queues cannot be read without consuming: while a configured queue holds messages,
    an id found on no worker may be waiting there, so it is UNKNOWN, never LOST (and LOST
    again only when the queue is empty or absent)."""
    monitor = monitors(amqp_url, queues=(queue,))
    nowhere = str(uuid.uuid4())
    # The queue does not exist yet: nothing can wait in it.
    assert monitor.task_traces([nowhere]) == {nowhere: TaskTrace.LOST}

    waiting = client.send_task("tests.add", args=[1, 2], queue=queue)
    wait_for(lambda: message_count(amqp_url, queue) == 1, timeout=5, what="the message to land")
    assert monitor.task_traces([waiting.id, nowhere]) == {
        waiting.id: TaskTrace.UNKNOWN,
        nowhere: TaskTrace.UNKNOWN,
    }
