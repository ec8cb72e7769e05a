"""ClusterMonitor on Redis without worker processes: a queued task, and an unreachable or hung
broker or result backend read as unknown, never as lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from exporter.celery_state import TaskTrace
from exporter.errors import CheckUnknown
from tests.celery_app import make_app
from tests.services import RedisTarget, free_port, wait_for
from tests.support.celery_helpers import Monitors, redis_link


@pytest.fixture
def client(broker_url: str) -> Iterator[Celery]:
    """The producer side: an app that sends tasks the way the user's application does."""
    app = make_app(broker_url)
    yield app
    app.close()


def test_task_waiting_in_a_queue_no_worker_consumes_is_queued(
    broker_url: str, redis_target: RedisTarget, monitors: Monitors, client: Celery
) -> None:
    """With no worker at all (no inspect reply is no error), a task waiting in a configured
    queue is QUEUED, not LOST, whatever its priority (kombu keeps one list per priority step)."""
    queue = f"idle-{uuid.uuid4().hex[:6]}"
    monitor = monitors(broker_url, backend=broker_url, queues=("celery", queue))
    plain = client.send_task("tests.add", args=[1, 2], queue=queue)
    urgent = client.send_task("tests.add", args=[1, 2], queue=queue, priority=9)
    # The priority message really sits in its own list (kombu's "<queue>\x06\x169").
    assert redis_target.client().llen(f"{queue}\x06\x169") == 1

    assert monitor.task_traces([plain.id, urgent.id]) == {
        plain.id: TaskTrace.QUEUED,
        urgent.id: TaskTrace.QUEUED,
    }


def test_unreachable_broker_is_unknown_not_lost(monitors: Monitors) -> None:
    """With no broker to ask, no task can be called lost: task_traces raises CheckUnknown
    (without the broker password), and the broker reads down."""
    broker = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    monitor = monitors(broker)
    with pytest.raises(CheckUnknown) as caught:
        monitor.task_traces([str(uuid.uuid4())])
    assert "unreachable" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert not monitor.snapshot().broker_up
    assert monitor.snapshot().workers == []


def test_unreachable_result_backend_is_unknown_not_lost(
    broker_url: str, monitors: Monitors
) -> None:
    """A task found on no worker and in no queue may still have finished: with the result
    backend unreachable that cannot be told, so CheckUnknown rather than LOST."""
    backend = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    monitor = monitors(broker_url, backend=backend)
    with pytest.raises(CheckUnknown) as caught:
        monitor.task_traces([str(uuid.uuid4())])
    assert "result backend" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_hung_broker_reads_down_and_checks_give_up(
    redis_target: RedisTarget, monitors: Monitors
) -> None:
    """A broker that keeps the connection open but stops answering is down too: broker_up
    drops and task_traces raises CheckUnknown instead of hanging the check."""
    link = redis_link(redis_target)
    monitor = monitors(f"redis://127.0.0.1:{link.port}/{redis_target.db}")
    try:
        wait_for(lambda: monitor.snapshot().broker_up, timeout=10, what="the monitor to connect")
        link.freeze()
        with pytest.raises(CheckUnknown):
            monitor.task_traces([str(uuid.uuid4())])
        wait_for(lambda: not monitor.snapshot().broker_up, timeout=15, what="broker_up to drop")
        link.thaw()
        wait_for(lambda: monitor.snapshot().broker_up, timeout=15, what="the monitor to recover")
    finally:
        link.cut()
