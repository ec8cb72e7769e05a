"""The RabbitMQ broker signal (a worker's pidbox queue loses its consumer) and the workers
it must not take for dead: a stopped one and one without remote control. Real worker
processes on the shared RabbitMQ."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from exporter.celery_state import ClusterMonitor
from exporter.worker_presence import AMQP_SIGNAL
from tests.services import Worker, start_worker, wait_for
from tests.support.celery_helpers import Monitors, status_of

pytestmark = pytest.mark.rabbitmq


def wait_beating(monitor: ClusterMonitor, worker: Worker, beat: float) -> None:
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and s.online and s.freq == beat,
        timeout=15,
        what=f"a regular heartbeat of {worker.hostname} over AMQP",
    )


def test_killed_worker_is_down_before_its_heartbeat_expires_over_amqp(
    amqp_url: str, queue: str, tmp_path: Path, amqp_workers: list[Worker], monitors: Monitors
) -> None:
    """kill -9 closes the worker's connection and RabbitMQ drops its pidbox queue: confirmed
    by a ping nobody answers, it reads down (crashed) before 2 x its heartbeat interval."""
    beat = 4  # not 5: the heartbeat sent on request claims freq=5, a regular one says 4
    worker = start_worker(amqp_url, tmp_path, queues=queue, heartbeat=beat)
    amqp_workers.append(worker)
    monitor = monitors(amqp_url, queues=(queue,))
    wait_beating(monitor, worker, beat)
    wait_for(lambda: monitor.snapshot().liveness_method == AMQP_SIGNAL, timeout=10)

    worker.kill()

    def down() -> bool:
        now = time.time()
        status = status_of(monitor, worker.hostname, now)
        assert status is not None
        if status.online:
            return False
        assert now < status.last_heartbeat + 2 * status.freq, "down only by expiry"
        assert status.crashed
        return True

    wait_for(down, timeout=2 * beat + 2, interval=0.02, what="the killed worker down")


def test_stopped_worker_keeps_its_queue_and_stays_online_over_amqp(
    amqp_url: str, queue: str, tmp_path: Path, amqp_workers: list[Worker], monitors: Monitors
) -> None:
    """A worker stopped with SIGSTOP (starved of CPU) keeps its connection, so its pidbox
    queue stays held: no sign, and it stays online until its heartbeat rule would say
    otherwise."""
    beat = 5
    worker = start_worker(amqp_url, tmp_path, queues=queue, heartbeat=beat)
    amqp_workers.append(worker)
    monitor = monitors(amqp_url, queues=(queue,))
    wait_beating(monitor, worker, beat)
    wait_for(lambda: monitor.snapshot().liveness_method == AMQP_SIGNAL, timeout=10)

    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        end = time.monotonic() + 2.0

        def held() -> bool:
            status = status_of(monitor, worker.hostname)
            assert status is not None
            assert status.online, "the stopped worker read down"
            return time.monotonic() >= end

        wait_for(held, timeout=beat, interval=0.02, what="two seconds stopped")
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    status = status_of(monitor, worker.hostname)
    assert status is not None
    assert status.online


def test_worker_without_remote_control_is_judged_by_its_heartbeats_over_amqp(
    amqp_url: str, queue: str, tmp_path: Path, amqp_workers: list[Worker], monitors: Monitors
) -> None:
    """A worker with remote control disabled has no pidbox queue and answers no ping: the
    broker signal must not take that for a death. It stays online while it heartbeats and,
    killed, goes down by the heartbeat rule."""
    beat = 1
    worker = start_worker(amqp_url, tmp_path, queues=queue, heartbeat=beat, remote_control=False)
    amqp_workers.append(worker)
    monitor = monitors(amqp_url, queues=(queue,))
    wait_for(lambda: monitor.snapshot().liveness_method == AMQP_SIGNAL, timeout=10)
    first = wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and s.online and s.freq == beat and s,
        timeout=15,
        what="a regular heartbeat without remote control",
    )

    def heartbeats_on() -> bool:
        status = status_of(monitor, worker.hostname)
        assert status is not None
        assert status.online, "a live worker without remote control read down"
        return bool(status.last_heartbeat >= first.last_heartbeat + 3 * beat)

    wait_for(heartbeats_on, timeout=15, interval=0.02, what="three more heartbeats")
    worker.kill()
    wait_for(
        lambda: (s := status_of(monitor, worker.hostname)) and not s.online,
        timeout=2 * beat + 2,
        what="the killed worker down by the heartbeat rule",
    )
