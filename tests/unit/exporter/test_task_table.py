"""TaskTable: which declared periodic task succeeded when, and which is overdue (no services)."""

from __future__ import annotations

from exporter.task_schedule import MAX_PENDING_IDS, TaskExpectation, TaskTable

TICK = "core.tasks.cache_db_fields_task"


def table() -> TaskTable:
    return TaskTable({TICK: TaskExpectation(every=180.0, grace=30.0)})


def status(t: TaskTable, now: float, since: float = 0.0) -> object:
    (only,) = t.statuses(now, since)
    return only


def test_events_without_a_name_are_attributed_through_the_received_event() -> None:
    """task-started and task-succeeded carry only the id: the name comes from task-received."""
    t = table()
    t.event("task-received", "id-1", TICK, 100.0)
    t.event("task-started", "id-1", None, 101.0)
    t.event("task-succeeded", "id-1", None, 102.0)
    s = t.statuses(110.0, 0.0)[0]
    assert (s.last_received, s.last_started, s.last_succeeded, s.last_failed) == (
        100.0,
        101.0,
        102.0,
        None,
    )


def test_a_task_is_overdue_only_after_expect_every_plus_grace_since_its_last_success() -> None:
    t = table()
    t.event("task-received", "a", TICK, 1000.0)
    t.event("task-succeeded", "a", None, 1000.0)
    assert not t.statuses(1000.0 + 210.0, 0.0)[0].overdue
    assert t.statuses(1000.0 + 210.1, 0.0)[0].overdue


def test_a_task_that_keeps_failing_becomes_overdue() -> None:
    """Failures are recorded, but only a success resets the wait."""
    t = table()
    for i in range(5):
        t.event("task-received", f"f{i}", TICK, 60.0 * i)
        t.event("task-failed", f"f{i}", None, 60.0 * i + 1)
    s = t.statuses(300.0, 0.0)[0]
    assert s.last_failed == 241.0
    assert s.last_succeeded is None
    assert s.overdue


def test_the_wait_restarts_when_the_event_stream_reconnects() -> None:
    """A success may have been missed while the stream was down: no overdue before the full
    wait has passed since the reconnect, even when the last seen success is older."""
    t = table()
    t.event("task-received", "a", TICK, 0.0)
    t.event("task-succeeded", "a", None, 0.0)
    assert t.statuses(500.0, 0.0)[0].overdue
    assert not t.statuses(500.0, 400.0)[0].overdue
    assert t.statuses(611.0, 400.0)[0].overdue


def test_undeclared_tasks_are_counted_but_never_tracked() -> None:
    """Labels stay bounded by the config: a task nobody declared adds no series."""
    t = table()
    t.event("task-received", "x", "some.other.task", 1.0)
    t.event("task-succeeded", "x", None, 2.0)
    assert [s.name for s in t.statuses(3.0, 0.0)] == [TICK]
    assert t.statuses(3.0, 0.0)[0].last_succeeded is None
    assert t.events == 2


def test_ids_waiting_for_their_next_event_are_bounded() -> None:
    """A declared task sent in bulk cannot grow the id map without limit; the oldest ids go."""
    t = table()
    for i in range(MAX_PENDING_IDS + 10):
        t.event("task-received", f"id-{i}", TICK, float(i))
    t.event("task-succeeded", "id-0", None, 1e6)  # forgotten: not attributed
    assert t.statuses(1e6, 0.0)[0].last_succeeded is None
    t.event("task-succeeded", f"id-{MAX_PENDING_IDS + 9}", None, 1e6)
    assert t.statuses(1e6, 0.0)[0].last_succeeded == 1e6
