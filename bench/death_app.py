"""The Celery app of the worker-death benchmark's workers (`celery -A bench.death_app worker`).

Broker and result backend come from `$DEATHBENCH_BROKER` and `$DEATHBENCH_BACKEND`, so one app
serves the Redis and the RabbitMQ runs. Tasks are acknowledged on receipt (Celery's default):
a task running on a `kill -9`'d worker is then in no queue, on no worker and has no final
result, which is what taskmedic's orphan_tasks check calls `lost`.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery(
    "deathbench",
    broker=os.environ.get("DEATHBENCH_BROKER", "redis://127.0.0.1:6379/15"),
    backend=os.environ.get("DEATHBENCH_BACKEND", "redis://127.0.0.1:6379/15"),
)
app.conf.update(
    task_track_started=True,
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="deathbench.hold")  # type: ignore[untyped-decorator]
def hold(seconds: float) -> float:
    """Keep a worker slot busy: the job the status row says is running."""
    time.sleep(seconds)
    return seconds
