"""The Celery app the tests run in real worker processes.

The broker comes from `$TASKMEDIC_TEST_BROKER`; the result backend is the same Redis database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from celery import Celery


def make_app(broker: str | None = None) -> Celery:
    url = broker or os.environ.get("TASKMEDIC_TEST_BROKER", "redis://127.0.0.1:6379/15")
    # Celery 5 has no amqp:// result backend: an AMQP broker gets results over rpc://.
    app = Celery("tests", broker=url, backend=url if url.startswith("redis") else "rpc://")
    # TASKMEDIC_TEST_TASK_EVENTS=0: a worker that sends no task events (started without -E).
    events = os.environ.get("TASKMEDIC_TEST_TASK_EVENTS", "1") == "1"
    app.conf.update(
        task_send_sent_event=events,
        worker_send_task_events=events,
        task_track_started=True,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        worker_hijack_root_logger=False,
        # TASKMEDIC_TEST_REMOTE_CONTROL=0: a worker with no control channel (answers no ping).
        worker_enable_remote_control=os.environ.get("TASKMEDIC_TEST_REMOTE_CONTROL", "1") == "1",
    )
    # TASKMEDIC_TEST_BEAT="tests.add:1.5": what `celery beat` sends, and every how many seconds.
    beat = os.environ.get("TASKMEDIC_TEST_BEAT")
    if beat:
        task, _, every = beat.rpartition(":")
        app.conf.beat_schedule = {
            "periodic": {"task": task, "schedule": float(every), "args": _BEAT_ARGS.get(task, ())}
        }
    return app


_BEAT_ARGS: dict[str, tuple[object, ...]] = {"tests.add": (1, 2), "tests.fail": ("beat",)}

app = make_app()

P = ParamSpec("P")
R = TypeVar("R")


def task(name: str, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`app.task`, typed: the Task it returns is called like the function it wraps (the tests
    send tasks by name, so nothing else of the Task is used here)."""
    register: Callable[[Callable[P, R]], Callable[P, R]] = app.task(name=name, **options)
    return register


@task(name="tests.sleep")
def sleep(seconds: float) -> float:
    """Hold a worker slot for `seconds` (the 'processing' job of the tests)."""
    time.sleep(seconds)
    return seconds


@task(name="tests.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="tests.fail")
def fail(message: str) -> None:
    raise RuntimeError(message)


@task(name="timesketch.lib.tasks.run_plaso", track_started=True)
def run_plaso(
    file_path: str,
    events: str | None,
    timeline_name: str,
    index_name: str,
    source_type: str,
    timeline_id: int,
    plaso_event_filter: str = "",
) -> str:
    """A stand-in for Timesketch's import task, with its real name and signature (Timesketch
    sends all six arguments positionally, timeline_id last). The "import" takes as many
    seconds as the file at `file_path` says."""
    with open(file_path, encoding="utf-8") as f:
        time.sleep(float(f.read().strip() or 0))
    return index_name


@task(name="tests.touch")
def touch(path: str, text: str = "") -> str:
    """Write a file: lets a test see that a task really ran."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return path


@task(name="core.tasks.cache_db_fields_task")
def cache_db_fields_task() -> None:
    """A stand-in for TacticalRMM's tree-icon task, with its real name and signature, on
    TacticalRMM's own clients_site and clients_client tables (tests/apps/tacticalrmm.sql, in
    the database `$TASKMEDIC_TEST_TRMM_DSN` names).

    TacticalRMM sets each site's failing_checks to {"error": bool, "warning": bool} from its
    agents' checks, and each client's from all its agents (those of its sites). The agents and
    checks tables are not in the test schema, so here no agent has a failing check: every site
    gets {"error": false, "warning": false} and each client the OR of its sites', which is
    what TacticalRMM writes when no agent fails. Like TacticalRMM's
    (update_fields=["failing_checks"]), it moves no timestamp.
    """
    import psycopg

    with psycopg.connect(os.environ["TASKMEDIC_TEST_TRMM_DSN"]) as conn:
        conn.execute(
            """UPDATE clients_site SET failing_checks = '{"error": false, "warning": false}'"""
        )
        conn.execute(
            """
            UPDATE clients_client c SET failing_checks = (
                SELECT jsonb_build_object(
                    'error', coalesce(bool_or((s.failing_checks->>'error')::boolean), false),
                    'warning', coalesce(bool_or((s.failing_checks->>'warning')::boolean), false))
                FROM clients_site s WHERE s.client_id = c.id)
            """
        )
