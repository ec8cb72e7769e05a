"""The exporter's models of `taskmedic.yaml`, and the function that loads it.

One set of pydantic models validates the file, produces the `file:line: key: message` errors
and the JSON Schema. `Config` is the file as the exporter sees it: databases, Celery clusters,
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


class OrphanTasksCheck(CheckBase):
    """Rows `(key, task_id, since)` that claim a Celery task is running."""

    type: Literal["orphan_tasks"]
    celery: Name
    grace: Duration = 120.0


class OrphanRowsCheck(CheckBase):
    """Rows `(key, since)` the query itself calls orphans (relational orphans)."""

    type: Literal["orphan_rows"]
    grace: Duration = 60.0


Check = Annotated[
    StaleStatusCheck | OrphanTasksCheck | OrphanRowsCheck, Field(discriminator="type")
]


class Config(Model):
    """The whole `taskmedic.yaml` as the exporter sees it.

    `OTHER_SECTIONS` are top-level keys another program reads from the same file (the
    healer's `healer:`). `Config` skips them unread, so the exporter accepts the file the
    healer accepts; a subclass that declares one of them as a field validates it instead.
    """

    OTHER_SECTIONS: ClassVar[frozenset[str]] = frozenset({"healer"})

    databases: dict[Name, DatabaseConfig] = Field(default_factory=dict)
    celery: dict[Name, CeleryConfig] = Field(default_factory=dict)
    exporter: ExporterSettings = Field(default_factory=ExporterSettings)
    checks: list[Check] = Field(default_factory=list)

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
        out = self.model_dump(mode="json", include={"exporter", "checks"})
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
        if problems:
            raise ConfigError(problems)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate `taskmedic.yaml`; raises ConfigError listing every located problem."""
    return load(Config, path, env)
