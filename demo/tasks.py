"""The demo's sample Celery app, run by a real worker and beat (`celery -A demo.tasks`).

It behaves like the applications taskmedic watches: beat refreshes a status cache (TacticalRMM's
agent tree), uploads start "timeline" imports whose row says `processing` until the task sets
it `ready` (Timesketch), and a task record is written with its action (ibex). Broker and
database come from the environment the demo sets for the worker and beat.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from demo import sample

BROKER_ENV = "TASKMEDIC_DEMO_BROKER"
DSN_ENV = "TASKMEDIC_DEMO_DSN"
TIMELINE_SECONDS_ENV = "TASKMEDIC_DEMO_TIMELINE_SECONDS"

# How often beat runs each job; the demo's printed guide quotes these.
CACHE_EVERY = 5.0
UPLOAD_EVERY = 15.0
RECORD_EVERY = 30.0


def make_app(broker: str) -> Any:
    """A Celery app on `broker` (also the result backend) with task events on."""
    app = Celery("demo", broker=broker, backend=broker)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        timezone="UTC",
        beat_schedule={
            "refresh-tree-status-cache": {
                "task": "demo.update_tree_status_cache",
                "schedule": CACHE_EVERY,
            },
            "upload-timeline": {"task": "demo.upload_timeline", "schedule": UPLOAD_EVERY},
            "record-task": {"task": "demo.record_task", "schedule": RECORD_EVERY},
        },
    )
    app.task(name="demo.update_tree_status_cache")(update_tree_status_cache)
    app.task(name="demo.upload_timeline")(upload_timeline)
    app.task(name="demo.process_timeline")(process_timeline)
    app.task(name="demo.record_task")(record_task)
    return app


def _dsn() -> str:
    return os.environ[DSN_ENV]


def update_tree_status_cache() -> int:
    """Beat's job: mark every agent's cached status as fresh; returns the rows refreshed."""
    return sample.refresh_cache(_dsn())


def upload_timeline() -> int:
    """A user uploads a timeline: the row says `processing` and an import task is sent."""
    return sample.submit_timeline(_dsn(), app, f"upload-{time.strftime('%H%M%S')}")


def process_timeline(timeline_id: int) -> str:
    """Import a timeline: ~20 s of work, then the row becomes `ready`.

    Killing the worker during the sleep is the demo's fault: the row keeps saying
    `processing` with a task id no worker, queue or result knows.
    """
    time.sleep(float(os.environ.get(TIMELINE_SECONDS_ENV, "20")))
    sample.finish_timeline(_dsn(), timeline_id)
    return "ready"


def record_task(name: str = "scheduled") -> int:
    """Write a task record and its action in ONE transaction (what ibex failed to do)."""
    return sample.add_record(_dsn(), name, with_action=True)


app = make_app(os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"))
