"""Races the exporter must never call orphans, against a real worker, a real exporter process
and scrapes 5 times a second; then a true orphan, which must show within interval x 2 + grace.

An application thread commits each job's row first and publishes its task after (the order
every app has: the row is where the task id is kept), many tasks at once while the check
runs; a second thread marks each row done as soon as the backend has its task's result, so
there is a moment, every time, when a task has finished and its row still says
`processing`. Rows are dated past grace when written, so the check looks each one up at once.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_app import make_app
from tests.services import RedisTarget, Worker, start_worker, wait_for
from tests.support.exporter_helpers import pg_exec
from tests.support.faults import COUNTS, Scraper, report

INTERVAL, GRACE = 0.5, 1.0  # what exporter_for configures


def _dispatch(dsn: str, broker: str, ids: list[str], rng: random.Random) -> None:
    app = make_app(broker)
    try:
        for i, task_id in enumerate(ids):
            pg_exec(
                dsn,
                "INSERT INTO timeline VALUES (%s, 'processing', %s, now() - interval '2 s')",
                (i, task_id),
            )
            time.sleep(rng.uniform(0, 0.01))  # committed before its task is published
            app.send_task("tests.sleep", args=[rng.uniform(0, 0.05)], task_id=task_id)
    finally:
        app.close()


def _finish(dsn: str, client: redis.Redis, ids: list[str], stop: threading.Event) -> int:
    """Mark rows done as their results appear; returns how many."""
    pending = set(ids)
    done = 0
    while pending and not stop.is_set():
        batch = sorted(pending)
        results = client.mget([f"celery-task-meta-{t}" for t in batch])
        finished = [t for t, r in zip(batch, results, strict=True) if r is not None]
        if finished:
            pg_exec(
                dsn,
                "UPDATE timeline SET status = 'done' WHERE celery_task_id = ANY(%s)",
                (finished,),
            )
            pending -= set(finished)
            done += len(finished)
        time.sleep(0.02)
    return done


@pytest.mark.timeout(600)
def test_dispatch_publish_and_finish_races_are_never_orphans_and_a_true_one_shows_in_time(
    exporter_for: Any,
    timeline: str,
    redis_target: RedisTarget,
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    broker = redis_target.url
    workers.append(start_worker(broker, tmp_path, concurrency=4))
    port, log = exporter_for(broker, broker, ["celery"])
    scraper = Scraper(port)
    wait_for(
        lambda: (scraper.last() or (None,))[0] == 1,
        timeout=60,
        what=f"the first collection:\n{log.read_text()}",
    )
    tasks = COUNTS.race_tasks
    ids = [str(uuid.uuid4()) for _ in range(tasks)]
    stop = threading.Event()
    finished: list[int] = []
    finisher = threading.Thread(
        target=lambda: finished.append(_finish(timeline, redis_target.client(), ids, stop)),
        daemon=True,
    )
    finisher.start()
    try:
        _dispatch(timeline, broker, ids, random.Random(int(time.time())))
        finisher.join(timeout=300)
    finally:
        stop.set()
    racing = len(scraper.seen)
    timed = len(scraper.durations)
    # The true orphan: a row naming a task id nobody knows, written now.
    true_at = time.monotonic()
    pg_exec(timeline, "INSERT INTO timeline VALUES (%s, 'processing', %s, now())", (-1, "x"))
    wait_for(
        lambda: (scraper.last() or (None, None))[1] == 1,
        timeout=30,
        what="the true orphan to be counted",
    )
    shown_after = time.monotonic() - true_at
    scraper.stop()
    # The longest collection while the orphan was being found.
    took = max(scraper.durations[timed:] or scraper.durations)
    # interval x 2 + grace, where an interval is at least a collection's own length (Celery's
    # inspect waits inspect_timeout for replies), plus the last collection's own run and the
    # scrape that reads it.
    budget = max(INTERVAL, took) * 2 + GRACE + took + Scraper.EVERY
    during = scraper.seen[:racing]
    false = [s for s in during if s[1] not in (None, 0) or s[2] not in (None, 0)]
    report(
        "orphan races",
        tasks=tasks,
        rows_finished=finished[0] if finished else 0,
        scrapes_during_races=len(during),
        false_positives=len(false),
        true_orphan_shown_after_s=round(shown_after, 2),
        budget_s=round(budget, 2),
        collection_s=round(took, 2),
    )
    assert finished == [tasks]
    assert false == [], false[:5]
    assert all(s[0] == 1 for s in during if s[0] is not None), log.read_text()[-3000:]
    assert shown_after <= budget
