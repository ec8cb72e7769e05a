"""The users' tables the exporter benchmarks read, generated server-side (generate_series).

`jobs` is a Timesketch-like job table: most rows are done, a few claim to be `processing` with
the Celery task id they run under. `agents_status_cache` is a TacticalRMM-like status cache.
"""

from __future__ import annotations

import psycopg

JOBS_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id             bigint PRIMARY KEY,
    status         text NOT NULL,
    celery_task_id text,
    updated_at     timestamptz NOT NULL,
    payload        text NOT NULL DEFAULT ''
)
"""

# The index an operator adds for a "WHERE status = 'processing'" check: it holds only the few
# rows that claim to run, so its size does not grow with the table.
PROCESSING_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_processing ON jobs (id) "
    "INCLUDE (celery_task_id, updated_at) WHERE status = 'processing'"
)


def jobs_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        return int(row[0]) if row else 0


def grow_jobs(dsn: str, rows: int, processing_every: int = 1000) -> None:
    """Grow `jobs` to `rows` rows; every `processing_every`-th row is `processing` for an hour.

    Ids continue where the table stops, so growing 1k -> 1M keeps the rows already there.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(JOBS_DDL)
        row = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()
        start = int(row[0]) if row else 0
        if start >= rows:
            return
        conn.execute(
            """
            INSERT INTO jobs (id, status, celery_task_id, updated_at, payload)
            SELECT i,
                   CASE WHEN i %% %(every)s = 0 THEN 'processing' ELSE 'done' END,
                   gen_random_uuid()::text,
                   CASE WHEN i %% %(every)s = 0 THEN now() - interval '1 hour'
                        ELSE now() - (i %% 86400) * interval '1 second' END,
                   repeat('x', 40)
            FROM generate_series(%(start)s::bigint + 1, %(stop)s::bigint) AS i
            """,
            {"every": processing_every, "start": start, "stop": rows},
        )
        conn.execute("VACUUM ANALYZE jobs")


def add_processing_index(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PROCESSING_INDEX)
        conn.execute("VACUUM ANALYZE jobs")


def set_task_ids(dsn: str, ids_by_row: dict[int, str]) -> None:
    """Point some processing rows at real Celery task ids (the ones a worker is running)."""
    with psycopg.connect(dsn) as conn:
        for row_id, task_id in ids_by_row.items():
            conn.execute("UPDATE jobs SET celery_task_id = %s WHERE id = %s", (task_id, row_id))


def processing_ids(dsn: str, limit: int) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE status = 'processing' ORDER BY id LIMIT %s", (limit,)
        ).fetchall()
    return [int(r[0]) for r in rows]


STATUS_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS agents_status_cache (
    agent_id   integer PRIMARY KEY,
    status     text NOT NULL,
    updated_at timestamptz NOT NULL
)
"""


def fill_status_cache(dsn: str, agents: int, stale_every: int = 100) -> None:
    """`agents` cache rows refreshed within the last minute; every `stale_every`-th is 2 h old."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(STATUS_CACHE_DDL)
        conn.execute("TRUNCATE agents_status_cache")
        conn.execute(
            """
            INSERT INTO agents_status_cache (agent_id, status, updated_at)
            SELECT i, 'online',
                   CASE WHEN i %% %(every)s = 0 THEN now() - interval '2 hours'
                        ELSE now() - (i %% 60) * interval '1 second' END
            FROM generate_series(1, %(n)s) AS i
            """,
            {"every": stale_every, "n": agents},
        )
        conn.execute("VACUUM ANALYZE agents_status_cache")
