"""orphan_tasks for apps that store no task id (Timesketch): rows matched to a Celery task by
name and argument, on Timesketch's real tables, with a real worker and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from exporter.checks import run_once
from tests.apps import create_pg
from tests.celery_app import make_app
from tests.services import Worker, start_worker, wait_for
from tests.support.exporter_helpers import pg_exec
from tests.support.timesketch import config


@pytest.fixture
def timesketch(pg_dsn: str) -> str:
    create_pg(pg_dsn, "timesketch")
    return pg_dsn


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    client = make_app(broker_url)
    yield client
    client.close()


def processing_timeline(dsn: str, timeline_id: int, minutes_ago: int = 30) -> None:
    """A timeline whose import began `minutes_ago`, as the upload API leaves it."""
    pg_exec(
        dsn,
        "INSERT INTO timeline (id, created_at, updated_at, name) "
        "VALUES (%(id)s, now(), now(), %(name)s)",
        {"id": timeline_id, "name": f"timeline {timeline_id}"},
    )
    for status, at in (("new", minutes_ago + 1), ("processing", minutes_ago)):
        pg_exec(
            dsn,
            "INSERT INTO timeline_status (created_at, updated_at, status, parent_id) "
            "VALUES (now() - make_interval(mins => %(m)s), now(), %(s)s, %(id)s)",
            {"m": at, "s": status, "id": timeline_id},
        )


def start_import(
    app: Celery, tmp_path: Path, timeline_id: int, seconds: float, queue: str = "celery"
) -> str:
    """Send the import the way Timesketch's build_index_pipeline does: positional args."""
    plaso = tmp_path / f"upload-{timeline_id}.plaso"
    plaso.write_text(str(seconds))
    index = uuid.uuid4().hex
    result = app.send_task(
        "timesketch.lib.tasks.run_plaso",
        args=[str(plaso), None, f"timeline {timeline_id}", index, "plaso", timeline_id],
        queue=queue,
    )
    return str(result.id)


def lost(outcome: Any) -> set[int]:
    return {f.key for f in outcome.findings if f.reason == "lost"}


async def test_an_import_running_or_waiting_is_never_an_orphan_and_one_without_a_task_is(
    timesketch: str,
    broker_url: str,
    tmp_path: Path,
    workers: list[Worker],
    app: Celery,
) -> None:
    """Timeline 7's import runs (however long: it began 30 minutes ago), 8's waits in a queue
    no worker serves yet, 9 says processing but no task exists: only 9 is an orphan. After
    the worker is killed, 7's task is gone too, while 8's still waits in its queue."""
    worker = start_worker(broker_url, tmp_path, concurrency=1)
    workers.append(worker)
    for timeline_id in (7, 8, 9):
        processing_timeline(timesketch, timeline_id)
    start_import(app, tmp_path, 7, 120)
    start_import(app, tmp_path, 8, 120, queue="imports")
    wait_for(
        lambda: "timesketch.lib.tasks.run_plaso" in worker.output(),
        timeout=15,
        what="the first import to start",
    )
    cfg = config(tmp_path, timesketch, broker_url, position=5, keyword="timeline_id")

    outcome = await run_once(cfg, "timesketch_imports")
    assert outcome.rows == 3
    assert lost(outcome) == {9}

    worker.kill()
    outcome = await run_once(cfg, "timesketch_imports")
    assert lost(outcome) == {7, 9}


async def test_an_import_sent_with_keyword_arguments_is_found_by_keyword(
    timesketch: str,
    broker_url: str,
    tmp_path: Path,
    workers: list[Worker],
    app: Celery,
) -> None:
    worker = start_worker(broker_url, tmp_path, concurrency=1)
    workers.append(worker)
    processing_timeline(timesketch, 11)
    plaso = tmp_path / "kw.plaso"
    plaso.write_text("120")
    app.send_task(
        "timesketch.lib.tasks.run_plaso",
        args=[str(plaso), None, "kw", "idx", "plaso"],
        kwargs={"timeline_id": 11},
    )
    wait_for(lambda: "run_plaso" in worker.output(), timeout=15, what="the import to start")
    by_keyword = config(tmp_path, timesketch, broker_url, keyword="timeline_id")
    assert lost(await run_once(by_keyword, "timesketch_imports")) == set()
    by_position_only = config(tmp_path, timesketch, broker_url, position=5)
    assert lost(await run_once(by_position_only, "timesketch_imports")) == {11}
