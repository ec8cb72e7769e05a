"""The sample application's tables and the few writes it makes.

Used by the demo's setup (schema and seed rows) and by its Celery tasks. This is the sample
APPLICATION writing to its own database; the exporter only ever reads it.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

SCHEMA = """
DROP TABLE IF EXISTS task_action, task_record, timeline, agents_status_cache;
CREATE TABLE agents_status_cache (
    agent_id   text PRIMARY KEY,
    status     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE timeline (
    id             serial PRIMARY KEY,
    name           text NOT NULL,
    status         text NOT NULL,
    status_text    text,
    celery_task_id text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX timeline_processing ON timeline (id) WHERE status = 'processing';
CREATE TABLE task_record (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE task_action (
    id         integer PRIMARY KEY REFERENCES task_record (id),
    action     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO agents_status_cache (agent_id, status)
SELECT 'agent-' || to_char(n, 'FM00'), 'online' FROM generate_series(1, 5) AS n;
"""

AGENTS = 5


def create_schema(dsn: str) -> int:
    """(Re)create the sample tables with fresh rows; returns the id of the orphan record.

    Three records get their action; a fourth was written without one, as ibex did when its
    second write failed, so the orphan_rows check has something to find from the start.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    for i in range(3):
        add_record(dsn, f"seed-{i + 1}", with_action=True)
    return add_record(dsn, "half-written", with_action=False)


def refresh_cache(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute("UPDATE agents_status_cache SET status = 'online', updated_at = now()")
        return cur.rowcount


def submit_timeline(dsn: str, app: Any, name: str) -> int:
    """Insert a `processing` row carrying its task id, commit, then send the import task.

    The row is committed first (as Timesketch does), so the task always finds it and the row
    exists while its task waits in the queue.
    """
    task_id = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO timeline (name, status, status_text, celery_task_id)"
            " VALUES (%s, 'processing', 'importing', %s) RETURNING id",
            (name, task_id),
        ).fetchone()
    assert row is not None
    timeline_id = int(row[0])
    app.send_task("demo.process_timeline", args=[timeline_id], task_id=task_id)
    return timeline_id


def finish_timeline(dsn: str, timeline_id: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE timeline SET status = 'ready', status_text = 'imported', updated_at = now()"
            " WHERE id = %s AND status = 'processing'",
            (timeline_id,),
        )


def add_record(dsn: str, name: str, *, with_action: bool) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO task_record (name) VALUES (%s) RETURNING id", (name,)
        ).fetchone()
        assert row is not None
        record_id = int(row[0])
        if with_action:
            conn.execute("INSERT INTO task_action (id, action) VALUES (%s, 'start')", (record_id,))
    return record_id
