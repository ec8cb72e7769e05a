"""orphan_tasks' own rules (grace, reasons, two observations) on a real PostgreSQL table.

The Celery side is a small stand-in trace source here, and only here: it lets each rule be
shown with exact trace answers (a task vanishing and reappearing between two looks cannot be
staged on a real cluster on demand). test_orphan_tasks.py covers the same check with real
workers, a real broker and the real ClusterMonitor.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from exporter.celery_state import ClusterMonitor, ClusterSnapshot, TaskMatch, TaskTrace
from exporter.checks import run_once
from exporter.errors import CheckUnknown
from exporter.runner import Runner
from tests.support.exporter_helpers import config_from, pg_exec, registry_of


class StandInTraces:
    """Answers task_traces from a dict; records which ids it was asked about."""

    def __init__(self, traces: dict[str, TaskTrace], broker_up: bool = True) -> None:
        self.traces = traces
        self.broker_up = broker_up
        self.asked: list[list[str]] = []
        self.fail: CheckUnknown | None = None

    def task_traces(self, task_ids: Iterable[str]) -> dict[str, TaskTrace]:
        ids = list(task_ids)
        self.asked.append(ids)
        if self.fail is not None:
            raise self.fail
        return {t: self.traces.get(t, TaskTrace.LOST) for t in ids}

    def task_traces_by_argument(self, match: TaskMatch, values: list[str]) -> dict[str, TaskTrace]:
        raise AssertionError("these checks match rows by task id, never by argument")

    def snapshot(self, now: float | None = None) -> ClusterSnapshot:
        return ClusterSnapshot("main", self.broker_up, [])


def as_monitor(traces: StandInTraces) -> ClusterMonitor:
    """The Runner takes ClusterMonitors but uses only `snapshot` and the TraceSource methods,
    which the stand-in answers."""
    return cast(ClusterMonitor, traces)


def orphan_config(dsn: str, grace: str = "1m") -> dict[str, Any]:
    return {
        "databases": {"app": {"dsn": dsn}},
        "celery": {"main": {"broker": "redis://127.0.0.1:1/0"}},
        "checks": [
            {
                "name": "timelines",
                "type": "orphan_tasks",
                "database": "app",
                "celery": "main",
                "grace": grace,
                "query": "SELECT id, celery_task_id, updated_at FROM timeline "
                "WHERE status = 'processing'",
            }
        ],
    }


@pytest.fixture
def timelines(pg_dsn: str) -> str:
    pg_exec(
        pg_dsn,
        "CREATE TABLE timeline (id int PRIMARY KEY, status text, celery_task_id text, "
        "updated_at timestamptz)",
    )
    pg_exec(
        pg_dsn,
        "INSERT INTO timeline VALUES "
        "(1, 'processing', 't-active', now() - interval '1 hour'), "
        "(2, 'processing', 't-queued', now() - interval '1 hour'), "
        "(3, 'processing', 't-lost', now() - interval '1 hour'), "
        "(4, 'processing', 't-finished', now() - interval '1 hour'), "
        "(5, 'processing', NULL, now() - interval '1 hour'), "
        "(6, 'processing', 't-young', now()), "
        "(7, 'processing', 't-unknown', now() - interval '1 hour'), "
        "(8, 'processing', 't-reserved', now() - interval '1 hour'), "
        "(9, 'processing', 't-scheduled', now() - interval '1 hour'), "
        "(10, 'ready', 't-done-row', now() - interval '1 hour')",
    )
    return pg_dsn


TRACES = {
    "t-active": TaskTrace.ACTIVE,
    "t-queued": TaskTrace.QUEUED,
    "t-lost": TaskTrace.LOST,
    "t-finished": TaskTrace.FINISHED,
    "t-young": TaskTrace.LOST,
    "t-unknown": TaskTrace.UNKNOWN,
    "t-reserved": TaskTrace.RESERVED,
    "t-scheduled": TaskTrace.SCHEDULED,
}


async def test_only_lost_and_finished_tasks_past_grace_are_orphans(
    timelines: str, tmp_path: Path
) -> None:
    """Active, reserved, scheduled and queued tasks are alive; an unknown whereabouts is not
    counted; a row without task id is lost; a young row is within grace and not even looked up."""
    traces = StandInTraces(TRACES)
    config = config_from(tmp_path, orphan_config(timelines))
    outcome = await run_once(config, "timelines", {"main": traces}, pause=0)
    found = {(f.key, f.task_id, f.reason) for f in outcome.findings}
    assert found == {(3, "t-lost", "lost"), (4, "t-finished", "finished"), (5, None, "lost")}
    for asked in traces.asked:
        assert "t-young" not in asked
        assert "t-done-row" not in asked
    assert all(f.age_seconds >= 3600 for f in outcome.findings)


async def test_a_task_seen_again_on_the_second_look_is_no_orphan(
    timelines: str, tmp_path: Path
) -> None:
    """The two observations guard against a task in transit: lost on the first look but
    active on the second is not counted, and the count is 0 with both reasons exported."""
    traces = StandInTraces({**TRACES, "t-finished": TaskTrace.ACTIVE})
    runner = Runner(
        config_from(tmp_path, orphan_config(timelines)), monitors={"main": as_monitor(traces)}
    )
    registry = registry_of(runner)
    try:
        pg_exec(timelines, "DELETE FROM timeline WHERE id IN (4, 5)")
        await runner.collect("timelines")
        assert (
            registry.get_sample_value(
                "taskmedic_orphan_tasks", {"check": "timelines", "reason": "lost"}
            )
            is None
        )
        traces.traces["t-lost"] = TaskTrace.ACTIVE
        await runner.collect("timelines")
        for reason in ("lost", "finished"):
            labels = {"check": "timelines", "reason": reason}
            assert registry.get_sample_value("taskmedic_orphan_tasks", labels) == 0
        age = registry.get_sample_value(
            "taskmedic_orphan_oldest_age_seconds", {"check": "timelines"}
        )
        assert age == 0
        traces.traces["t-lost"] = TaskTrace.LOST
        await runner.collect("timelines")
        labels = {"check": "timelines", "reason": "lost"}
        assert registry.get_sample_value("taskmedic_orphan_tasks", labels) == 0
        await runner.collect("timelines")
        assert registry.get_sample_value("taskmedic_orphan_tasks", labels) == 1
        age = registry.get_sample_value(
            "taskmedic_orphan_oldest_age_seconds", {"check": "timelines"}
        )
        assert age is not None
        assert age >= 3600
    finally:
        await runner.stop()


async def test_a_row_whose_task_id_changed_starts_its_observations_again(
    timelines: str, tmp_path: Path
) -> None:
    """A row re-dispatched under a new task id is a new suspect, not a confirmed orphan."""
    traces = StandInTraces(TRACES)
    runner = Runner(
        config_from(tmp_path, orphan_config(timelines)), monitors={"main": as_monitor(traces)}
    )
    try:
        await runner.collect("timelines")
        pg_exec(timelines, "UPDATE timeline SET celery_task_id = 't-lost-2' WHERE id = 3")
        await runner.collect("timelines")
        outcome = runner.state("timelines").outcome
        assert outcome is not None
        assert {f.key for f in outcome.findings} == {4, 5}
    finally:
        await runner.stop()


async def test_broker_unknown_means_no_count(timelines: str, tmp_path: Path) -> None:
    """When the cluster cannot be asked, the check is unknown: no orphan gauge, check_up 0,
    whether the lookup fails or the event stream already says the broker is down."""
    traces = StandInTraces(TRACES)
    runner = Runner(
        config_from(tmp_path, orphan_config(timelines)), monitors={"main": as_monitor(traces)}
    )
    registry = registry_of(runner)
    try:
        traces.fail = CheckUnknown("celery cluster 'main': broker unreachable")
        await runner.collect("timelines")
        assert registry.get_sample_value("taskmedic_check_up", {"check": "timelines"}) == 0
        assert runner.state("timelines").error == "celery cluster 'main': broker unreachable"

        traces.fail = None
        traces.broker_up = False
        pg_exec(timelines, "UPDATE timeline SET updated_at = now()")  # nothing to look up
        await runner.collect("timelines")
        assert registry.get_sample_value("taskmedic_check_up", {"check": "timelines"}) == 0
        for reason in ("lost", "finished"):
            labels = {"check": "timelines", "reason": reason}
            assert registry.get_sample_value("taskmedic_orphan_tasks", labels) is None
    finally:
        await runner.stop()


async def test_a_task_that_cannot_be_located_is_exported_as_unknown_never_repaired(
    timelines: str, tmp_path: Path
) -> None:
    """A row whose task cannot be located (messages wait in a queue we cannot read) is no
    orphan, but the check does not export 0 for it either: it counts under reason unknown."""
    traces = StandInTraces(TRACES)
    runner = Runner(
        config_from(tmp_path, orphan_config(timelines)), monitors={"main": as_monitor(traces)}
    )
    registry = registry_of(runner)
    try:
        pg_exec(timelines, "DELETE FROM timeline WHERE id <> 7")
        await runner.collect("timelines")
        await runner.collect("timelines")
        assert registry.get_sample_value("taskmedic_check_up", {"check": "timelines"}) == 1
        for reason, count in (("lost", 0), ("finished", 0), ("unknown", 1)):
            labels = {"check": "timelines", "reason": reason}
            assert registry.get_sample_value("taskmedic_orphan_tasks", labels) == count
        outcome = runner.state("timelines").outcome
        assert outcome is not None
        assert outcome.findings == []  # a repair acts on findings only
    finally:
        await runner.stop()
