"""ClusterMonitor on RabbitMQ: liveness from real workers' events over AMQP, and the honest
limit of a broker whose queues cannot be read without consuming them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from exporter.celery_state import TaskTrace
from tests.celery_app import make_app
from tests.services import Worker, start_worker, wait_for
from tests.support.celery_helpers import Monitors, status_of

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def client(amqp_url: str) -> Iterator[Celery]:
    app = make_app(amqp_url)
    yield app
    app.close()


def test_killed_worker_goes_offline_over_amqp(
    amqp_url: str, queue: str, tmp_path: Path, amqp_workers: list[Worker], monitors: Monitors
) -> None:
    """Heartbeats arrive through RabbitMQ's event exchange; kill -9 reads offline within two
    heartbeat intervals plus a second."""
    worker = start_worker(amqp_url, tmp_path, queues=queue, heartbeat=1)
    amqp_workers.append(worker)
    monitor = monitors(amqp_url, queues=(queue,))
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and s.online and s.freq == 1.0,
        timeout=10,
        what="a regular heartbeat over AMQP",
    )
    assert monitor.snapshot().broker_up

    worker.kill()
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and not s.online,
        timeout=2 * 1.0 + 1.0,
        what="the killed worker to read offline",
    )


def test_cleanly_stopped_worker_goes_offline_at_once_over_amqp(
    amqp_url: str, queue: str, tmp_path: Path, amqp_workers: list[Worker], monitors: Monitors
) -> None:
    """SIGTERM: the worker-offline event crosses RabbitMQ and the worker reads offline before
    its heartbeat could have expired."""
    worker = start_worker(amqp_url, tmp_path, queues=queue, heartbeat=5)
    amqp_workers.append(worker)
    monitor = monitors(amqp_url, queues=(queue,))
    wait_for(lambda: (s := status_of(monitor, worker.hostname)) and s.online, timeout=10)

    worker.stop()
    status = wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and not s.online and s,
        timeout=5,
        what="the stopped worker to read offline",
    )
    assert time.time() < status.last_heartbeat + 2 * status.freq, "offline only by expiry"


def test_task_on_a_live_worker_is_active_and_an_unknown_id_lost_when_queues_are_empty(
    amqp_url: str,
    queue: str,
    tmp_path: Path,
    amqp_workers: list[Worker],
    monitors: Monitors,
    client: Celery,
) -> None:
    """inspect finds the running task; an id found nowhere is LOST because every configured
    queue is empty, so it cannot be waiting."""
    worker = start_worker(amqp_url, tmp_path, queues=queue)
    amqp_workers.append(worker)
    monitor = monitors(amqp_url, queues=(queue,))
    job = client.send_task("tests.sleep", args=[20], queue=queue)
    nowhere = str(uuid.uuid4())
    wait_for(
        lambda: (
            monitor.task_traces([job.id, nowhere])
            == {job.id: TaskTrace.ACTIVE, nowhere: TaskTrace.LOST}
        ),
        timeout=10,
        what="the task to run on the worker",
    )
    worker.kill()  # SIGTERM would wait for the 20 s task
