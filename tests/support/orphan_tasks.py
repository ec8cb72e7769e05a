"""What the orphan_tasks tests share: a `timeline` table like Timesketch's old one (a row
names its Celery task id), and a check of it through the exporter's own Runner."""

from __future__ import annotations

from typing import Any

from exporter.runner import Runner
from tests.support.exporter_helpers import pg_exec, registry_of

QUERY = "SELECT id, celery_task_id, updated_at FROM timeline WHERE status = 'processing'"


def add_row(dsn: str, key: int, task_id: str, age: str = "1 hour") -> None:
    pg_exec(
        dsn,
        "INSERT INTO timeline VALUES (%s, 'processing', %s, now() - %s::interval)",
        (key, task_id, age),
    )


def config_data(dsn: str, broker: str, *, grace: str = "1m", **exporter: Any) -> dict[str, Any]:
    return {
        "databases": {"app": {"dsn": dsn}},
        "celery": {"main": {"broker": broker, "backend": broker, "inspect_timeout": "0.5s"}},
        "exporter": {"interval": "0.5s", "timeout": "5s", **exporter},
        "checks": [
            {
                "name": "timelines",
                "type": "orphan_tasks",
                "database": "app",
                "celery": "main",
                "grace": grace,
                "query": QUERY,
            }
        ],
    }


def lost_finished(runner: Runner) -> tuple[float | None, float | None]:
    registry = registry_of(runner)
    return tuple(  # type: ignore[return-value]
        registry.get_sample_value("taskmedic_orphan_tasks", {"check": "timelines", "reason": r})
        for r in ("lost", "finished")
    )


async def collect_twice(runner: Runner) -> None:
    await runner.collect("timelines")
    await runner.collect("timelines")
    state = runner.state("timelines")
    assert state.up, state.error
