"""The typed models of `taskmedic.yaml` and the one function that loads it.

One set of pydantic models validates the file, produces the `file:line: key: message` errors
and the JSON Schema. The `healer:` section is validated by `healer.config`, which extends
`Config`; the exporter only carries it along.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from exporter.configfile import Located, load_yaml, validate
from exporter.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*((?:\d+(?:\.\d+)?(?:ms|s|m|h|d)\s*)+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """`"90s"`, `"10m"`, `"1h30m"`, `"250ms"` or a number of seconds -> seconds as float."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=100)]


def mask_dsn(dsn: str) -> str:
    """Hide the password of a URL or libpq key=value DSN; everything else stays readable.

    Errs on the side of hiding: an unescaped `@` or `/` in a URL password cannot reveal part
    of it, because the user info is taken up to the LAST `@`.
    """
    masked = re.sub(
        r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1***", dsn, flags=re.IGNORECASE
    )
    m = re.match(r"^([a-z][a-z0-9+.-]*://)(.*)$", masked, flags=re.IGNORECASE | re.DOTALL)
    if m is None or "@" not in m.group(2):
        return masked
    userinfo, _, rest = m.group(2).rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{m.group(1)}{userinfo}@{rest}"


class Model(BaseModel):
    """Every section forbids unknown keys: a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


_MYSQL_OPTIONS = {
    "unix_socket": str,
    "charset": str,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
    "ssl_verify_cert": bool,
    "ssl_verify_identity": bool,
}


def dsn_kind(raw: str) -> Literal["postgresql", "mysql"]:
    """Which driver a DSN needs, from its scheme; the error never echoes the DSN."""
    scheme = urlsplit(raw).scheme.split("+")[0].lower() if "://" in raw else ""
    if scheme in ("postgresql", "postgres") or (not scheme and "=" in raw):
        return "postgresql"
    if scheme in ("mysql", "mariadb"):
        parse_mysql_dsn(raw)
        return "mysql"
    raise ValueError(
        "dsn must start with postgresql://, postgres://, mysql:// or mariadb:// "
        "(or be a libpq key=value string)"
    )


def parse_mysql_dsn(dsn: str) -> dict[str, Any]:
    """`mysql://user:pass@host:port/db?unix_socket=...` -> pymysql.connect() keyword arguments.

    Percent-escapes in the user, password and database are decoded. Errors name the part that
    is wrong, never its value (it may be the password).
    """
    parts = urlsplit(dsn)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("dsn has an invalid port") from None
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else "",
        "database": unquote(parts.path.lstrip("/")) or None,
    }
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _MYSQL_OPTIONS.get(key)
        if kind is None:
            known = ", ".join(sorted(_MYSQL_OPTIONS))
            raise ValueError(f"dsn has an unknown MySQL option {key!r} (known: {known})")
        if kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"dsn option {key} must be true or false")
            args[key] = value.lower() in ("1", "true", "yes")
        else:
            args[key] = value
    return args


class DatabaseConfig(Model):
    """A user's database, reached read-only. The DSN scheme picks the driver.

    `max_connections` bounds how many checks query it at once (each on its own connection),
    so a hundred checks never open a hundred connections to a user's database.
    """

    dsn: SecretStr | None = None
    dsn_file: Path | None = None
    password_file: Path | None = None
    connect_timeout: Duration = 5.0
    max_connections: int = Field(default=4, ge=1, le=64)

    @field_validator("dsn")
    @classmethod
    def _dsn_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            dsn_kind(value.get_secret_value())
        return value

    @field_validator("dsn_file")
    @classmethod
    def _dsn_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            dsn_kind(_read_secret(value, "dsn_file"))
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_secret(value, "password_file")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> DatabaseConfig:
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("give exactly one of dsn or dsn_file")
        if self.dsn_file is not None:
            object.__setattr__(self, "dsn", SecretStr(_read_secret(self.dsn_file, "dsn_file")))
        return self

    @property
    def kind(self) -> Literal["postgresql", "mysql"]:
        return dsn_kind(self.dsn.get_secret_value() if self.dsn else "")

    def secret_dsn(self) -> str:
        """The DSN as written (or read from `dsn_file`); never log this value.

        A `password_file` is not merged into it: pass `password()` to the driver separately.
        """
        assert self.dsn is not None
        return self.dsn.get_secret_value()

    def password(self) -> str | None:
        """The content of `password_file` (read at each call, so a rotated secret is used)."""
        return _read_secret(self.password_file, "password_file") if self.password_file else None

    def display(self) -> str:
        return mask_dsn(self.secret_dsn())


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


class CeleryConfig(Model):
    """A Celery cluster: where its broker and result backend are, and how to judge liveness."""

    broker: SecretStr
    backend: SecretStr | None = None
    queues: list[str] = Field(default_factory=lambda: ["celery"])
    inspect_timeout: Duration = 1.0
    purge_offline_after: Duration = 300.0
    # A worker that crashed (no goodbye) stays listed as crashed until it comes back, or
    # this long if set; unset, its alert cannot resolve unless a worker of that name returns.
    forget_crashed_after: Duration | None = None
    # Ask workers to send task events (Celery's `enable_events` control command), for
    # workers started without -E. Off by default: it changes the workers' behaviour.
    enable_events: bool = False

    def display(self) -> dict[str, Any]:
        return {
            "broker": mask_dsn(self.broker.get_secret_value()),
            "backend": mask_dsn(self.backend.get_secret_value()) if self.backend else None,
            "queues": self.queues,
            "inspect_timeout": self.inspect_timeout,
            "purge_offline_after": self.purge_offline_after,
            "forget_crashed_after": self.forget_crashed_after,
            "enable_events": self.enable_events,
        }


def _listen(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$", value):
        raise ValueError("expected host:port, for example 127.0.0.1:9808")
    if int(value.rsplit(":", 1)[1]) > 65535:
        raise ValueError("port must be at most 65535")
    return value


Listen = Annotated[str, BeforeValidator(_listen)]


def split_listen(listen: str) -> tuple[str, int]:
    host, port = listen.rsplit(":", 1)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all


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


Check = Annotated[
    StaleStatusCheck | OrphanTasksCheck | OrphanRowsCheck, Field(discriminator="type")
]


class Config(Model):
    """The whole `taskmedic.yaml` as the exporter sees it."""

    databases: dict[Name, DatabaseConfig] = Field(default_factory=dict)
    celery: dict[Name, CeleryConfig] = Field(default_factory=dict)
    exporter: ExporterSettings = Field(default_factory=ExporterSettings)
    checks: list[Check] = Field(default_factory=list)
    periodic_tasks: list[PeriodicTask] = Field(default_factory=list)
    healer: Any = None  # validated by healer.config

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
        out = self.model_dump(mode="json", exclude={"databases", "celery", "healer"})
        for shown, check in zip(out["checks"], self.checks, strict=True):
            shown["interval"] = self.interval_of(check)  # effective values, not null
            shown["timeout"] = self.timeout_of(check)
        out["databases"] = {n: _display_database(d) for n, d in self.databases.items()}
        out["celery"] = {n: c.display() for n, c in self.celery.items()}
        return out


def _display_database(d: DatabaseConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"dsn": d.display()}
    if d.dsn_file is not None:
        out["dsn_file"] = str(d.dsn_file)
    if d.password_file is not None:
        out["password_file"] = str(d.password_file)
    out["connect_timeout"] = d.connect_timeout
    out["max_connections"] = d.max_connections
    return out


def cross_check(config: Config, located: Located) -> None:
    """References between sections: a check naming an undefined database or cluster."""
    problems = []
    seen: set[str] = set()
    for i, c in enumerate(config.checks):
        if c.name in seen:
            problems.append(located.problem(("checks", i, "name"), f"duplicate check {c.name!r}"))
        seen.add(c.name)
        if c.database not in config.databases:
            problems.append(
                located.problem(
                    ("checks", i, "database"),
                    f"database {c.database!r} is not defined under databases",
                )
            )
        if isinstance(c, OrphanTasksCheck) and c.celery not in config.celery:
            problems.append(
                located.problem(
                    ("checks", i, "celery"), f"celery cluster {c.celery!r} is not defined"
                )
            )
    tasks_seen: set[tuple[str, str]] = set()
    for i, t in enumerate(config.periodic_tasks):
        if t.cluster not in config.celery:
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
    located = load_yaml(path, env)
    config = validate(Config, located)
    cross_check(config, located)
    return config
