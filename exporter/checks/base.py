"""What every check shares: findings, outcomes, timestamps and the rule of two observations.

Clock: ages are the database's own `now()` (read in the query's transaction) minus the row's
timestamp, so a clock skew between the exporter and the database never makes a row stale or
orphaned. Timestamps may be timezone-aware (`timestamptz`), naive (`timestamp`, MySQL
`DATETIME`: taken as UTC, the sessions run in UTC), a number of Unix seconds (or milliseconds
when larger than 1e11), or an ISO 8601 string. An app that stores local time in naive columns
converts in its query (`updated_at AT TIME ZONE 'Europe/Paris'`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from exporter.celery_state import TaskMatch
from exporter.config import Config, OrphanRowsCheck, OrphanTasksCheck, StaleStatusCheck
from exporter.databases import Databases, QueryResult
from exporter.errors import CheckUnknown

__all__ = [
    "Check",
    "CheckContext",
    "CheckOutcome",
    "CheckSpec",
    "Finding",
    "TraceSource",
    "age_seconds",
    "to_utc",
]

CheckSpec = StaleStatusCheck | OrphanTasksCheck | OrphanRowsCheck


@dataclass(frozen=True)
class Finding:
    """One row a check reports: its key as the database returned it (an int stays an int)."""

    key: Any
    task_id: str | None
    since: datetime | None
    age_seconds: float  # inf for a stale row whose timestamp is NULL (never refreshed)
    reason: str | None  # orphan_tasks: "lost" or "finished"


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one successful collection of one check.

    `confirmed` is False on the first observation of an orphan check (or the first after a
    failure): its count needs two consecutive observations, so it is not known yet.
    """

    check: str
    type: str
    findings: list[Finding]
    rows: int  # rows the query returned
    oldest_age_seconds: float  # see each check; 0 when there is nothing to age
    observed_at: datetime  # the database's clock
    confirmed: bool = True
    # orphan_tasks: rows past grace whose task could not be located (an unreadable queue
    # holds messages, or a live worker did not answer in time). Never findings: nothing may
    # repair them, but they are counted so that "cannot tell" is not exported as 0.
    unknown: int = 0

    def count(self, reason: str | None = None) -> int:
        return sum(1 for f in self.findings if reason is None or f.reason == reason)


class TraceSource(Protocol):
    """Where Celery task ids stand (`exporter.celery_state.ClusterMonitor` is the real one)."""

    def task_traces(self, task_ids: list[str]) -> Mapping[str, str]: ...

    def task_traces_by_argument(self, match: TaskMatch, values: list[str]) -> Mapping[str, str]: ...


@dataclass
class CheckContext:
    """What checks run against: the databases and, for orphan_tasks, the clusters."""

    databases: Databases
    monitors: Mapping[str, TraceSource] = field(default_factory=dict)
    # Set where the clusters' event streams are followed (the exporter): a broker seen down
    # makes orphan_tasks unknown even when no row needs a lookup.
    broker_up: Callable[[str], bool] | None = None


def to_utc(value: Any) -> datetime | None:
    """A row's timestamp as an aware UTC datetime; raises CheckUnknown for other types."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        seconds = float(value)
        if seconds > 1e11:  # milliseconds: 1e11 s is the year 5138
            seconds /= 1000.0
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        try:
            return to_utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise CheckUnknown(
        f"expected a timestamp (or Unix seconds), the query returned a {type(value).__name__}"
    )


def age_seconds(now: datetime, since: datetime) -> float:
    """Seconds from `since` to the database's `now`; never negative (a row from the future
    written by a client whose clock runs ahead is simply new)."""
    return max(0.0, (now - since).total_seconds())


def identity(*parts: Any) -> Hashable:
    """A hashable identity for database values (a PostgreSQL array arrives as a list)."""
    return tuple(tuple(p) if isinstance(p, list) else p for p in parts)


class Check(ABC):
    """One configured check. Instances keep what one collection must remember for the next
    (the previous observation, when a row without timestamp was first seen)."""

    def __init__(self, spec: CheckSpec, config: Config) -> None:
        self.spec = spec
        self.name = spec.name
        self.timeout = config.timeout_of(spec)
        self.interval = config.interval_of(spec)

    @abstractmethod
    async def collect(self, ctx: CheckContext) -> CheckOutcome:
        """Query, judge, and return the outcome; raise CheckUnknown when blind."""

    def reset(self) -> None:  # noqa: B027 - only the orphan checks remember anything
        """Forget earlier observations (after a failed collection the chain is broken)."""

    async def query(self, ctx: CheckContext, columns: tuple[int, int]) -> QueryResult:
        """Run the check's query; it must return between columns[0] and columns[1] columns."""
        try:
            db = ctx.databases.get(self.spec.database)
        except KeyError:
            raise CheckUnknown(f"database {self.spec.database!r} is not configured") from None
        result = await db.fetch(self.spec.query, self.timeout)
        low, high = columns
        if not low <= len(result.columns) <= high:
            want = f"{low}" if low == high else f"{low} to {high}"
            raise CheckUnknown(
                f"the query of a {self.spec.type} check must return {want} columns, "
                f"it returned {len(result.columns)} ({', '.join(result.columns)})"
            )
        return result


class Observations:
    """Grace and two consecutive observations, shared by the orphan checks.

    A row is a candidate when it is past its grace; it becomes a finding when it was a
    candidate in the previous observation too. A row without a timestamp ages from the moment
    this process first saw it (so `run_once` cannot confirm such a row within a grace > 0).
    """

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._previous: set[Hashable] | None = None
        self._first_seen: dict[Hashable, float] = {}

    def age(
        self, ident: Hashable, now: datetime, since: datetime | None, seen: set[Hashable]
    ) -> float:
        """The row's age, and note it as seen in this observation."""
        seen.add(ident)
        if since is not None:
            return age_seconds(now, since)
        at = self._clock()
        return at - self._first_seen.setdefault(ident, at)

    def settle(
        self, seen: set[Hashable], candidates: dict[Hashable, Finding]
    ) -> tuple[list[Finding], bool]:
        """Record this observation; return the confirmed findings and whether the count is
        known (False on a first observation)."""
        for ident in list(self._first_seen):
            if ident not in seen:
                del self._first_seen[ident]
        previous, self._previous = self._previous, set(candidates)
        if previous is None:
            return [], False
        return [f for ident, f in candidates.items() if ident in previous], True

    def reset(self) -> None:
        self._previous = None
