"""The exporter's models of `taskmedic.yaml`, and the function that loads it.

One set of pydantic models validates the file and produces the `file:line: key: message`
errors. `Config` is the file as the exporter sees it: databases, Celery clusters,
the exporter's settings and its checks. The healer reads the same file with a model of its
own that extends `Config` with its `healer:` section; the exporter leaves that section unread.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from exporter.base.configfile import Located, load
from exporter.base.connections import CeleryConfig, DatabaseConfig
from exporter.base.errors import ConfigError
from exporter.base.types import Duration, Listen, Model, Name

__all__ = [
    "Check",
    "CheckBase",
    "Config",
    "ExporterSettings",
    "OrphanRowsCheck",
    "OrphanTasksCheck",
    "StaleStatusCheck",
    "load_config",
]


class ExporterSettings(Model):
    listen: Listen = "127.0.0.1:9808"
    interval: Duration = 15.0
    timeout: Duration = 10.0


class CheckBase(Model):
    name: Name
    database: Name
    query: str = Field(min_length=1)
    interval: Duration | None = None
    timeout: Duration | None = None
    help: str | None = None


class StaleStatusCheck(CheckBase):
    """Rows `(key, timestamp)`; stale when the timestamp is older than `max_age`."""

    type: Literal["stale_status"]
    max_age: Duration


class TaskMatchConfig(Model):
    """For apps that store no task id: the query's second column is matched against one
    argument of these tasks, by `position` (0-based) or `keyword` (either or both: a task
    may be sent either way)."""

    tasks: list[str] = Field(min_length=1)
    position: int | None = Field(default=None, ge=0)
    keyword: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_argument(self) -> TaskMatchConfig:
        if self.position is None and self.keyword is None:
            raise ValueError("give position (0-based) or keyword of the argument to match")
        return self


class OrphanTasksCheck(CheckBase):
    """Rows `(key, task_id, since)` that claim a Celery task is running; with `match`,
    rows `(key, argument_value, since)` matched to a task by name and argument."""

    type: Literal["orphan_tasks"]
    celery: Name
    grace: Duration = 120.0
    match: TaskMatchConfig | None = None


class OrphanRowsCheck(CheckBase):
    """Rows `(key, since)` the query itself calls orphans (relational orphans)."""

    type: Literal["orphan_rows"]
    grace: Duration = 60.0


TaskName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$", max_length=200)]


class PeriodicTask(Model):
    """A Celery task that must succeed every `expect_every` (a celery beat schedule, say).

    `grace` absorbs the jitter of the schedule and of the task's run time; by default a tenth
    of `expect_every`, at least 30 s. Only declared tasks get per-task series, so the label set
    is the config's, never the broker's.
    """

    cluster: Name
    task: TaskName
    expect_every: Duration = Field(gt=0)
    grace: Duration | None = None

    @property
    def effective_grace(self) -> float:
        return self.grace if self.grace is not None else max(self.expect_every / 10, 30.0)


Check = Annotated[
    StaleStatusCheck | OrphanTasksCheck | OrphanRowsCheck, Field(discriminator="type")
]


class Config(Model):
    """The whole `taskmedic.yaml` as the exporter sees it.

    `OTHER_SECTIONS` are top-level keys another program reads from the same file (the
    healer's `healer:`). `Config` skips them unread, so the exporter accepts the file the
    healer accepts; a subclass that declares one of them as a field validates it instead.
    """

    OTHER_SECTIONS: ClassVar[frozenset[str]] = frozenset({"healer", "agents"})

    databases: dict[Name, DatabaseConfig] = Field(default_factory=dict)
    celery: dict[Name, CeleryConfig] = Field(default_factory=dict)
    exporter: ExporterSettings = Field(default_factory=ExporterSettings)
    checks: list[Check] = Field(default_factory=list)
    periodic_tasks: list[PeriodicTask] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _skip_other_sections(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        skipped = cls.OTHER_SECTIONS - set(cls.model_fields)
        return {k: v for k, v in data.items() if k not in skipped}

    def check(self, name: str) -> StaleStatusCheck | OrphanTasksCheck | OrphanRowsCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def interval_of(self, check: CheckBase) -> float:
        return check.interval if check.interval is not None else self.exporter.interval

    def timeout_of(self, check: CheckBase) -> float:
        t = check.timeout if check.timeout is not None else self.exporter.timeout
        return min(t, self.interval_of(check))

    def display(self) -> dict[str, Any]:
        """The effective config as plain data with every secret masked."""
        out = self.model_dump(mode="json", include={"exporter", "checks", "periodic_tasks"})
        for shown, check in zip(out["checks"], self.checks, strict=True):
            shown["interval"] = self.interval_of(check)  # effective values, not null
            shown["timeout"] = self.timeout_of(check)
        out["databases"] = {n: d.shown() for n, d in self.databases.items()}
        out["celery"] = {n: c.display() for n, c in self.celery.items()}
        return out

    def loaded_from(self, located: Located) -> None:
        """References between sections: a check naming an undefined database or cluster."""
        problems = []
        seen: set[str] = set()
        for i, c in enumerate(self.checks):
            if c.name in seen:
                problems.append(
                    located.problem(("checks", i, "name"), f"duplicate check {c.name!r}")
                )
            seen.add(c.name)
            if c.database not in self.databases:
                problems.append(
                    located.problem(
                        ("checks", i, "database"),
                        f"database {c.database!r} is not defined under databases",
                    )
                )
            if isinstance(c, OrphanTasksCheck) and c.celery not in self.celery:
                problems.append(
                    located.problem(
                        ("checks", i, "celery"), f"celery cluster {c.celery!r} is not defined"
                    )
                )
        tasks_seen: set[tuple[str, str]] = set()
        for i, t in enumerate(self.periodic_tasks):
            if t.cluster not in self.celery:
                problems.append(
                    located.problem(
                        ("periodic_tasks", i, "cluster"),
                        f"celery cluster {t.cluster!r} is not defined",
                    )
                )
            if (t.cluster, t.task) in tasks_seen:
                problems.append(
                    located.problem(
                        ("periodic_tasks", i, "task"),
                        f"task {t.task!r} of cluster {t.cluster!r} is declared twice",
                    )
                )
            tasks_seen.add((t.cluster, t.task))
        if problems:
            raise ConfigError(problems)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate `taskmedic.yaml`; raises ConfigError listing every located problem."""
    return load(Config, path, env)
