"""ClusterMonitor on Redis: worker liveness from real worker processes' events, and where a
task id stands (worker, queue, result backend, nowhere)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from exporter.celery_state import ClusterMonitor, TaskTrace
from exporter.errors import CheckUnknown
from tests.celery_app import make_app
from tests.services import RedisTarget, Worker, start_worker, wait_for
from tests.support.celery_helpers import Monitors, redis_link, status_of


@pytest.fixture
def client(broker_url: str) -> Iterator[Celery]:
    """The producer side: an app that sends tasks the way the user's application does."""
    app = make_app(broker_url)
    yield app
    app.close()


def wait_regular_heartbeat(monitor: ClusterMonitor, worker: Worker, freq: float) -> None:
    """Wait until the monitor has the worker's own interval (the heartbeat a worker sends on
    request claims freq=5 whatever its real interval)."""
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and s.online and s.freq == freq,
        timeout=10,
        what=f"a regular heartbeat of {worker.hostname}",
    )


def test_live_worker_is_online_with_a_recent_heartbeat(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """A running worker is listed online, with the last heartbeat seconds ago and its interval."""
    worker = start_worker(broker_url, tmp_path, heartbeat=1)
    workers.append(worker)
    monitor = monitors(broker_url)
    wait_regular_heartbeat(monitor, worker, 1.0)
    snap = monitor.snapshot()
    status = status_of(monitor, worker.hostname)
    assert snap.cluster == "main"
    assert snap.broker_up
    assert status is not None
    assert status.online
    assert time.time() - status.last_heartbeat < 2 * status.freq


def test_killed_worker_reads_crashed_within_two_heartbeats_and_is_not_purged_like_a_stop(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """kill -9 sends no goodbye: the worker reads offline and crashed within 2 heartbeat
    intervals plus a second, and stays listed past purge_offline_after (an alert on it must
    not resolve because its series went away); only forget_crashed_after drops it."""
    purge, forget = 1.0, 4.0
    worker = start_worker(broker_url, tmp_path, heartbeat=1)
    workers.append(worker)
    monitor = monitors(broker_url, purge_offline_after=purge, forget_crashed_after=forget)
    wait_regular_heartbeat(monitor, worker, 1.0)
    assert not status_of(monitor, worker.hostname).crashed  # type: ignore[union-attr]

    offline_since = time.time()  # at the earliest: the broker signal may see it at once
    worker.kill()
    gone = wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and not s.online and s,
        timeout=2 * 1.0 + 1.0,
        what="the killed worker to read offline",
    )
    assert gone.crashed

    last_listed = time.time()

    def forgotten() -> float | None:
        nonlocal last_listed
        now = time.time()
        status = status_of(monitor, worker.hostname, now)
        if status is None:
            return now
        assert not status.online, "a dead worker came back"
        assert status.crashed, "a dead worker came back"
        last_listed = now
        return None

    forgotten_at = wait_for(forgotten, timeout=forget + 3, what="the crashed worker forgotten")
    assert last_listed >= offline_since + forget - 0.5, "dropped before forget_crashed_after"
    assert forgotten_at > offline_since + forget


def test_cleanly_stopped_worker_goes_offline_at_once_not_crashed_then_is_purged(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """A worker stopped with SIGTERM says goodbye (worker-offline): offline without waiting
    for its heartbeat to expire, never crashed, and dropped after purge_offline_after."""
    purge = 2.0
    worker = start_worker(broker_url, tmp_path, heartbeat=5)
    workers.append(worker)
    monitor = monitors(broker_url, purge_offline_after=purge)
    wait_for(lambda: (s := status_of(monitor, worker.hostname)) and s.online, timeout=10)

    worker.stop()
    status = wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and not s.online and s,
        timeout=5,
        what="the stopped worker to read offline",
    )
    assert time.time() < status.last_heartbeat + 2 * status.freq, "offline only by expiry"
    assert not status.crashed
    wait_for(
        lambda: status_of(monitor, worker.hostname) is None,
        timeout=purge + 3,
        what="the stopped worker purged",
    )


def test_tasks_held_by_a_live_worker_are_active_reserved_or_scheduled(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors, client: Celery
) -> None:
    """A running task is ACTIVE, one prefetched behind it RESERVED, one waiting for its ETA
    SCHEDULED; none of them ever reads LOST on the way."""
    worker = start_worker(broker_url, tmp_path, concurrency=1)
    workers.append(worker)
    monitor = monitors(broker_url, backend=broker_url)
    # The ETA task first: while the single slot's prefetch is taken it would stay queued.
    later = client.send_task("tests.add", args=[1, 2], countdown=60)
    running = client.send_task("tests.sleep", args=[20])
    waiting = client.send_task("tests.sleep", args=[20])
    ids = [running.id, waiting.id, later.id]
    expected = {
        running.id: TaskTrace.ACTIVE,
        waiting.id: TaskTrace.RESERVED,
        later.id: TaskTrace.SCHEDULED,
    }

    def settled() -> bool:
        traces = monitor.task_traces(ids)
        assert TaskTrace.LOST not in traces.values(), traces
        return traces == expected

    wait_for(settled, timeout=15, what="the three tasks to settle on the worker")
    worker.kill()  # SIGTERM would wait for the 20 s tasks


def test_finished_tasks_are_finished_and_unknown_ids_lost(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors, client: Celery
) -> None:
    """The result backend tells a task that ended (SUCCESS or FAILURE) from one that left no
    trace anywhere."""
    workers.append(start_worker(broker_url, tmp_path))
    monitor = monitors(broker_url, backend=broker_url)
    done = client.send_task("tests.add", args=[1, 2])
    failed = client.send_task("tests.fail", args=["boom"])
    assert done.get(timeout=10) == 3
    with pytest.raises(RuntimeError):
        failed.get(timeout=10, propagate=True)
    nowhere = str(uuid.uuid4())

    assert monitor.task_traces([done.id, failed.id, nowhere]) == {
        done.id: TaskTrace.FINISHED,
        failed.id: TaskTrace.FINISHED,
        nowhere: TaskTrace.LOST,
    }


def test_task_of_a_worker_killed_mid_task_is_lost(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors, client: Celery
) -> None:
    """kill -9 mid-task: the backend still says STARTED, but the task is on no worker and in
    no queue, so it is LOST once the worker's heartbeats say it is gone."""
    worker = start_worker(broker_url, tmp_path)
    workers.append(worker)
    monitor = monitors(broker_url, backend=broker_url)
    job = client.send_task("tests.sleep", args=[30])
    wait_for(lambda: job.state == "STARTED", timeout=10, what="the task to start")
    assert monitor.task_traces([job.id]) == {job.id: TaskTrace.ACTIVE}

    worker.kill()
    assert job.state == "STARTED"
    wait_for(  # a worker never seen alive (no heartbeat yet) cannot hold the task either
        lambda: (s := status_of(monitor, worker.hostname)) is None or not s.online,
        timeout=30,  # two heartbeat intervals (a requested heartbeat claims 5 s) and a margin
        what="the killed worker to read offline",
    )
    assert monitor.task_traces([job.id]) == {job.id: TaskTrace.LOST}


def test_task_of_a_live_worker_that_answers_too_slowly_is_unknown_not_lost(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors, client: Celery
) -> None:
    """A worker alive by its heartbeats that misses the inspect deadline (here: stopped with
    SIGSTOP, as a hung or overloaded host looks) may hold the task: UNKNOWN, never LOST."""
    worker = start_worker(broker_url, tmp_path, heartbeat=5)
    workers.append(worker)
    monitor = monitors(broker_url, backend=broker_url)
    job = client.send_task("tests.sleep", args=[30])
    wait_for(lambda: job.state == "STARTED", timeout=10, what="the task to start")
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) is not None and s.online,
        timeout=10,
        what="the worker's heartbeat",
    )
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        traces = monitor.task_traces([job.id])
        still_online = status_of(monitor, worker.hostname)
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    assert still_online is not None
    assert still_online.online  # the answer was given while the worker still read alive
    assert traces == {job.id: TaskTrace.UNKNOWN}


def test_broker_lost_and_back(
    broker_url: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    workers: list[Worker],
    monitors: Monitors,
) -> None:
    """When the monitor loses the broker, broker_up drops and the workers it can no longer
    hear are no longer listed (their liveness is unknown, not offline); when the broker is
    back it reconnects by itself and the live worker reads online again."""

    link = redis_link(redis_target)
    worker = start_worker(broker_url, tmp_path, heartbeat=1)
    workers.append(worker)
    monitor = monitors(f"redis://127.0.0.1:{link.port}/{redis_target.db}")
    try:
        wait_regular_heartbeat(monitor, worker, 1.0)
        assert monitor.snapshot().broker_up

        link.cut()
        wait_for(lambda: not monitor.snapshot().broker_up, timeout=5, what="broker_up to drop")
        with pytest.raises(CheckUnknown):
            monitor.task_traces([str(uuid.uuid4())])
        assert status_of(monitor, worker.hostname) is None

        link.restore()
        wait_for(lambda: monitor.snapshot().broker_up, timeout=10, what="the monitor to reconnect")
        wait_for(
            lambda: (s := status_of(monitor, worker.hostname)) and s.online,
            timeout=5,
            what="the live worker to read online again",
        )
    finally:
        link.cut()
