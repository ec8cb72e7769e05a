"""A killed worker seen from the broker (its connection closes) before Celery's heartbeat
rule would allow, and the cases that must never read as a death: a busy worker, a stopped
(CPU-starved) one, a network stall, and the exporter's own connection lost. Real worker
processes on this run's Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from exporter.celery_state import ClusterMonitor
from exporter.worker_presence import HEARTBEAT_RULE, REDIS_SIGNAL
from tests.celery_app import make_app
from tests.services import RedisTarget, Worker, start_worker, wait_for
from tests.support.celery_helpers import Monitors, redis_link, status_of


@pytest.fixture
def client(broker_url: str) -> Iterator[Celery]:
    """The producer side: an app that sends tasks the way the user's application does."""
    app = make_app(broker_url)
    yield app
    app.close()


# Long enough that Celery's rule (last heartbeat + 2 x 4 s) cannot be what a test observes;
# not 5, which the heartbeat a worker sends on request claims, so waiting for a regular
# heartbeat gives the broker watch time to have looked at the worker.
SLOW_BEAT = 4


def wait_online(monitor: ClusterMonitor, worker: Worker) -> None:
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and s.online and s.freq == SLOW_BEAT,
        timeout=15,
        what=f"a regular heartbeat of {worker.hostname}",
    )


def wait_down_before_the_heartbeat_rule(monitor: ClusterMonitor, worker: Worker) -> None:
    """Wait for the worker to read down, and fail if that only happened by heartbeat expiry."""

    def down() -> bool:
        now = time.time()
        status = status_of(monitor, worker.hostname, now)
        assert status is not None, f"{worker.hostname} vanished"
        if status.online:
            return False
        assert now < status.last_heartbeat + 2 * status.freq, "down only by the heartbeat rule"
        assert status.crashed
        return True

    wait_for(down, timeout=2 * SLOW_BEAT + 2, interval=0.02, what=f"{worker.hostname} down")


def stays_online(monitor: ClusterMonitor, worker: Worker, until: Callable[[], bool]) -> None:
    """Assert the worker reads online at every look until `until()` holds."""

    def check() -> bool:
        status = status_of(monitor, worker.hostname)
        assert status is not None, f"{worker.hostname} vanished"
        assert status.online, f"{worker.hostname} read down"
        return until()

    wait_for(check, timeout=2 * SLOW_BEAT, interval=0.02, what="the end of the observation")


def after(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def test_killed_worker_is_down_before_its_heartbeat_expires(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """kill -9 closes the worker's broker connections: the broker signal, confirmed by a ping
    nobody answers, sets it down (crashed) without waiting 2 x its heartbeat interval, and the
    cluster says it uses the broker signal."""
    worker = start_worker(broker_url, tmp_path, heartbeat=SLOW_BEAT)
    workers.append(worker)
    monitor = monitors(broker_url)
    wait_online(monitor, worker)
    wait_for(lambda: monitor.snapshot().liveness_method == REDIS_SIGNAL, timeout=10)

    worker.kill()
    wait_down_before_the_heartbeat_rule(monitor, worker)


def test_busy_worker_is_not_taken_for_the_one_that_died(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors, client: Celery
) -> None:
    """A worker with a long task in every pool slot still answers ping: when another worker
    of the cluster is killed, only the killed one reads down."""
    busy = start_worker(broker_url, tmp_path, heartbeat=SLOW_BEAT, concurrency=2, queues="busy")
    doomed = start_worker(broker_url, tmp_path, heartbeat=SLOW_BEAT)
    workers += [busy, doomed]
    monitor = monitors(broker_url, backend=broker_url)
    jobs = [client.send_task("tests.sleep", args=[30], queue="busy") for _ in range(2)]
    wait_for(lambda: all(j.state == "STARTED" for j in jobs), timeout=15, what="both slots busy")
    wait_online(monitor, busy)
    wait_online(monitor, doomed)

    doomed.kill()
    wait_down_before_the_heartbeat_rule(monitor, doomed)
    stays_online(monitor, busy, after(1.0))
    busy.kill()  # SIGTERM would wait for the 30 s tasks


def test_stopped_worker_is_not_declared_dead_by_the_broker_signal(
    broker_url: str, tmp_path: Path, workers: list[Worker], monitors: Monitors
) -> None:
    """A worker starved of CPU (SIGSTOP) keeps its connections and cannot answer ping. When
    another worker is killed meanwhile, the signal cannot tell which of the two silent
    workers left, so it declares neither: the starved one stays online and, resumed, goes
    on; the killed one still goes down by the heartbeat rule."""
    starved = start_worker(broker_url, tmp_path, heartbeat=SLOW_BEAT)
    doomed = start_worker(broker_url, tmp_path, heartbeat=SLOW_BEAT)
    workers += [starved, doomed]
    monitor = monitors(broker_url)
    wait_online(monitor, starved)
    wait_online(monitor, doomed)
    wait_for(lambda: monitor.snapshot().liveness_method == REDIS_SIGNAL, timeout=10)

    os.killpg(starved.proc.pid, signal.SIGSTOP)
    try:
        doomed.kill()
        stays_online(monitor, starved, after(2.0))
    finally:
        os.killpg(starved.proc.pid, signal.SIGCONT)
    stays_online(monitor, starved, after(1.0))
    gone = wait_for(
        lambda: (s := status_of(monitor, doomed.hostname)) and not s.online and s,
        timeout=2 * SLOW_BEAT + 2,
        what="the killed worker down by the heartbeat rule",
    )
    assert gone.crashed


def test_network_stall_of_a_worker_is_not_a_death(
    broker_url: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    workers: list[Worker],
    monitors: Monitors,
) -> None:
    """A worker whose link to the broker stalls and comes back (packets held, connections
    open: a network blip) never reads down."""
    link = redis_link(redis_target)
    try:
        url = f"redis://127.0.0.1:{link.port}/{redis_target.db}"
        worker = start_worker(url, tmp_path, heartbeat=SLOW_BEAT)
        workers.append(worker)
        monitor = monitors(broker_url)
        wait_online(monitor, worker)
        link.freeze()
        try:
            stays_online(monitor, worker, after(2.0))
        finally:
            link.thaw()
        stays_online(monitor, worker, after(1.0))
    finally:
        link.cut()


def test_worker_whose_connections_drop_and_reconnect_at_once_is_not_a_death(
    broker_url: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    workers: list[Worker],
    monitors: Monitors,
) -> None:
    """A blip that closes the worker's broker connections, the broker reachable again at
    once: its control connection is gone but comes back, so the signal declares nothing. (The
    worker restarts its consumer and says goodbye and hello around it: Celery's own clean
    offline, never a crash.)"""
    link = redis_link(redis_target)
    try:
        url = f"redis://127.0.0.1:{link.port}/{redis_target.db}"
        worker = start_worker(url, tmp_path, heartbeat=SLOW_BEAT)
        workers.append(worker)
        monitor = monitors(broker_url)
        wait_online(monitor, worker)
        wait_for(lambda: monitor.snapshot().liveness_method == REDIS_SIGNAL, timeout=10)
        restarted = worker.output().count("Connection to broker lost")
        link.drop()
        wait_for(
            lambda: worker.output().count("Connection to broker lost") > restarted,
            timeout=10,
            what="the worker to notice the blip",
        )
        end = after(3.0)

        def never_crashed() -> bool:
            status = status_of(monitor, worker.hostname)
            assert status is not None, f"{worker.hostname} vanished"
            assert not status.crashed, f"{worker.hostname} read dead after a blip"
            return end() and status.online

        wait_for(never_crashed, timeout=2 * SLOW_BEAT, interval=0.02, what="the worker back")
    finally:
        link.cut()


def test_exporter_losing_the_broker_makes_liveness_unknown_not_dead(
    broker_url: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    workers: list[Worker],
    monitors: Monitors,
) -> None:
    """When only the exporter's own connection is cut, no worker is listed (unknown, so no
    series instead of worker_up 0) and the method falls back to the heartbeat rule; when the
    connection is back, the live worker reads online without ever having read down."""
    link = redis_link(redis_target)
    try:
        worker = start_worker(broker_url, tmp_path, heartbeat=SLOW_BEAT)
        workers.append(worker)
        monitor = monitors(f"redis://127.0.0.1:{link.port}/{redis_target.db}")
        wait_online(monitor, worker)

        link.cut()
        wait_for(lambda: not monitor.snapshot().broker_up, timeout=10, what="broker_up to drop")
        past_expiry = after(2 * SLOW_BEAT + 1)  # past the worker's heartbeat expiry

        def unknown_until_expiry() -> bool:
            snap = monitor.snapshot()
            assert snap.broker_up or snap.workers == [], snap.workers
            return past_expiry()

        wait_for(unknown_until_expiry, timeout=2 * SLOW_BEAT + 5, interval=0.1)
        assert monitor.snapshot().liveness_method == HEARTBEAT_RULE

        link.restore()
        wait_for(lambda: monitor.snapshot().broker_up, timeout=15, what="the monitor back")
        status = status_of(monitor, worker.hostname)
        assert status is not None
        assert status.online
    finally:
        link.cut()
