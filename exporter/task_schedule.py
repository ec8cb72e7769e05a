"""Periodic tasks that stop running, seen from a Celery cluster's task events.

An app such as TacticalRMM keeps its UI true only while celery beat sends a task every few
minutes and a worker runs it to success; the task often writes no timestamp a SQL check could
read. The event stream does see it: `task-received` carries the task's name and id, and
`task-started`, `task-succeeded` and `task-failed` carry only the id, so a bounded map from id
to name (for declared tasks only) lets every event be attributed.

Only tasks declared under `celery.<cluster>.tasks` are tracked, so the label set is the
config's, never the broker's. Whether a task is overdue is judged when asked, from our own
clock: no success within `expect_every + grace` of the later of its last success and the
moment the event stream (re)connected. The reconnect counts because events sent while the
stream was down are lost: a success may have happened then, so the wait starts again rather
than calling a task overdue that may have run. While the stream is down nothing is judged
(the caller exports nothing), because a blind exporter must not say "on time" nor "overdue".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TaskExpectation", "TaskStatus", "TaskTable"]

# Ids of declared tasks waiting for their next event. A periodic task has a handful in flight;
# the bound only matters when a declared task is also sent in bulk.
MAX_PENDING_IDS = 10_000

_FIELDS = {
    "task-sent": "sent",
    "task-received": "received",
    "task-started": "started",
    "task-succeeded": "succeeded",
    "task-failed": "failed",
}


@dataclass(frozen=True)
class TaskExpectation:
    """How often a task must succeed: within `every` seconds, plus `grace` for jitter."""

    every: float
    grace: float


@dataclass(frozen=True)
class TaskStatus:
    """One declared task as of the moment it was asked about. Times are Unix seconds by our
    clock; None means not seen since the exporter started."""

    name: str
    expect_every: float
    grace: float
    last_received: float | None
    last_started: float | None
    last_succeeded: float | None
    last_failed: float | None
    overdue: bool


@dataclass
class _Seen:
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    failed: float | None = None


class TaskTable:
    """What the event stream told us about each declared task; overdue is computed when read."""

    def __init__(self, expected: Mapping[str, TaskExpectation]) -> None:
        self._expected = dict(expected)
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {name: _Seen() for name in self._expected}
        self._names: OrderedDict[str, str] = OrderedDict()  # task id -> declared name
        self._events = 0
        self._last_event: float | None = None

    @property
    def events(self) -> int:
        """Task events received from any worker, declared task or not (is -E on anywhere?)."""
        return self._events

    @property
    def last_event(self) -> float | None:
        return self._last_event

    def event(self, kind: str, task_id: object, name: object, received: float) -> None:
        """One `task-*` event. Unknown kinds and tasks nobody declared only count as events."""
        with self._lock:
            self._events += 1
            self._last_event = received
            field = _FIELDS.get(kind)
            if field is None or not isinstance(task_id, str):
                return
            if isinstance(name, str) and name in self._seen:
                self._names[task_id] = name
                self._names.move_to_end(task_id)
                while len(self._names) > MAX_PENDING_IDS:
                    self._names.popitem(last=False)
            known = self._names.get(task_id)
            if known is None:
                return
            seen = self._seen[known]
            setattr(seen, field, max(getattr(seen, field) or received, received))
            if field in ("succeeded", "failed"):
                self._names.pop(task_id, None)  # final: no further event will name this id

    def statuses(self, now: float, watching_since: float) -> list[TaskStatus]:
        """Every declared task as of `now`, given that events have been received without a
        gap since `watching_since` (the stream's last connect)."""
        out = []
        with self._lock:
            for name, expectation in sorted(self._expected.items()):
                seen = self._seen[name]
                since = max(seen.succeeded or watching_since, watching_since)
                out.append(
                    TaskStatus(
                        name=name,
                        expect_every=expectation.every,
                        grace=expectation.grace,
                        last_received=seen.received,
                        last_started=seen.started,
                        last_succeeded=seen.succeeded,
                        last_failed=seen.failed,
                        overdue=now > since + expectation.every + expectation.grace,
                    )
                )
        return out
