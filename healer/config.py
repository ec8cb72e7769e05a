"""The healer's configuration: the `healer:` section of `taskmedic.yaml` and the rule files.

`HealerConfig` extends the exporter's `Config` (the model of the shared file), so one file
configures both and the `repair` step can re-run the exporter's checks. Rule files are
validated by the models at the bottom of this module; `healer.rules` loads them and adds the
checks a model alone cannot express (templates, references to databases, clusters and checks).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    WithJsonSchema,
    model_validator,
)

from exporter.base.configfile import Located, load
from exporter.base.connections import DatabaseConfig, read_secret
from exporter.base.errors import ConfigError, Problem
from exporter.base.types import Duration, Listen, Model, Name, split_listen
from exporter.config import Config
from healer.plan import floats_in

_MASK = "***"
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "kib": 1024, "mib": 1024**2}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]i?[bB]|[bB])?\s*$")


def parse_size(value: Any) -> int:
    """`1048576`, `"512KiB"`, `"1MiB"`, `"2MB"` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1MiB or 65536")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    else:
        raise ValueError("expected a size such as 1MiB or 65536")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _SIZE.pattern},
            ],
            "description": "bytes, or a size such as 512KiB or 1MiB",
        },
        mode="validation",
    ),
]


class BasicAuthSettings(Model):
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _resolve(self) -> BasicAuthSettings:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password or password_file")
        if self.password_file is not None:
            secret = read_secret(self.password_file, "password_file")
            object.__setattr__(self, "password", SecretStr(secret))
        if not self.secret_password():
            raise ValueError("the password is empty")
        return self

    def secret_password(self) -> str:
        assert self.password is not None
        return self.password.get_secret_value()

    def display(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.username, "password": _MASK}
        if self.password_file is not None:
            out["password_file"] = str(self.password_file)
        return out


class AuthSettings(Model):
    """Who may post alerts and use the API and console.

    With no credentials the healer refuses to start, unless `allow_unauthenticated: true` AND
    it listens on a loopback address only (a laptop demo): a webhook that runs remediation must
    never be open to the network by accident.
    """

    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    basic_auth: BasicAuthSettings | None = None
    allow_unauthenticated: bool = False
    # Console sessions (cookie `taskmedic_session`): signed with a key derived from the
    # credentials above unless given here, so rotating the token also ends every session.
    session_secret: SecretStr | None = None
    session_ttl: Duration = 12 * 3600.0

    @model_validator(mode="after")
    def _resolve(self) -> AuthSettings:
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("give at most one of bearer_token or bearer_token_file")
        if self.bearer_token_file is not None:
            secret = read_secret(self.bearer_token_file, "bearer_token_file")
            object.__setattr__(self, "bearer_token", SecretStr(secret))
        if self.bearer_token is not None and not self.bearer_token.get_secret_value():
            raise ValueError("bearer_token is empty")
        if self.allow_unauthenticated and self.has_credentials:
            raise ValueError(
                "allow_unauthenticated cannot be combined with bearer_token or basic_auth"
            )
        return self

    @property
    def has_credentials(self) -> bool:
        return self.bearer_token is not None or self.basic_auth is not None

    def secret_token(self) -> str | None:
        return self.bearer_token.get_secret_value() if self.bearer_token else None

    def display(self) -> dict[str, Any]:
        """The settings as plain data: a secret shows as `***` (set) or null (not set)."""
        return {
            "bearer_token": _MASK if self.bearer_token is not None else None,
            "bearer_token_file": str(self.bearer_token_file) if self.bearer_token_file else None,
            "basic_auth": self.basic_auth.display() if self.basic_auth is not None else None,
            "allow_unauthenticated": self.allow_unauthenticated,
            "session_secret": _MASK if self.session_secret is not None else None,
            "session_ttl": self.session_ttl,
        }


class HealerSettings(Model):
    """The `healer:` section. Durations in seconds, sizes in bytes once loaded."""

    listen: Listen = "127.0.0.1:9809"
    journal: DatabaseConfig | None = None  # None: an embedded PostgreSQL under data_dir
    data_dir: Path = Path(".taskmedic")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rules: list[str] = Field(default_factory=list)  # globs, relative to the config file
    dry_run: bool = False
    max_body: Size = 1 << 20
    lease: Duration = 30.0
    approval_timeout: Duration = 3600.0
    shutdown_grace: Duration = 30.0
    log_retention: Duration = 30 * 86400.0
    output_cap: Size = 1 << 20
    executor_concurrency: int = Field(default=4, ge=1, le=256)

    @model_validator(mode="after")
    def _journal_is_postgresql(self) -> HealerSettings:
        if self.journal is not None and self.journal.kind != "postgresql":
            raise ValueError("the journal must be a PostgreSQL database")
        return self

    def display(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret masked."""
        out = self.model_dump(mode="json")  # then the sections with secrets, in place
        out["journal"] = self.journal.shown() if self.journal is not None else None
        out["auth"] = self.auth.display()
        return out


class HealerConfig(Config):
    """The whole `taskmedic.yaml` as the healer sees it: the exporter's `Config` and the
    `healer:` section, so one file configures both and a `repair` step can re-run a check."""

    healer: HealerSettings = Field(default_factory=HealerSettings)
    _located: Located | None = PrivateAttr(default=None)
    _base_dir: Path = PrivateAttr(default=Path("."))

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative rule globs and data_dir are resolved from it."""
        return self._base_dir

    def data_dir(self) -> Path:
        d = self.healer.data_dir
        return d if d.is_absolute() else self._base_dir / d

    def display(self) -> dict[str, Any]:
        """The effective config, healer section included, with every secret masked."""
        return {**super().display(), "healer": self.healer.display()}

    def loaded_from(self, located: Located) -> None:
        """The exporter's cross-checks; then remember the file, for relative paths and for
        problems found after loading."""
        super().loaded_from(located)
        self._located = located
        self._base_dir = Path(located.file).resolve().parent

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        """A problem located in the config file (used for checks made after loading)."""
        if self._located is not None:
            return self._located.problem(path, message)
        return Problem("<config>", None, ".".join(str(p) for p in path), message)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving_auth(config: HealerConfig, listen: str | None = None) -> None:
    """Refuse to serve without credentials, except on loopback with an explicit opt-in."""
    auth = config.healer.auth
    if auth.has_credentials:
        return
    host, _ = split_listen(listen or config.healer.listen)
    if not auth.allow_unauthenticated:
        raise ConfigError(
            [
                config.problem(
                    ("healer", "auth"),
                    "no credentials configured: set bearer_token (or bearer_token_file) or "
                    "basic_auth; `allow_unauthenticated: true` is accepted on a loopback "
                    "listen address only",
                )
            ]
        )
    if not is_loopback(host):
        raise ConfigError(
            [
                config.problem(
                    ("healer", "listen"),
                    f"allow_unauthenticated requires a loopback listen address, not {host!r}",
                )
            ]
        )


def load_healer_config(path: str | Path, env: Mapping[str, str] | None = None) -> HealerConfig:
    """Load and validate `taskmedic.yaml` with its `healer:` section; ConfigError if invalid."""
    return load(HealerConfig, path, env)


# --- Rule files -----------------------------------------------------------------------------

# A template is a string; the rule loader checks it references only declared `params`.
Template = str


def _finite(value: Any) -> Any:
    """Refuse NaN and infinity anywhere in a step's values: JSON has neither, so the journal
    could not store the plan (and the plan's hash is of JSON)."""
    for v in floats_in(value):
        if not math.isfinite(v):
            raise ValueError(f"{v} is not a JSON number: use a finite number or a string")
    return value


# A value a step passes on (SQL parameters, task arguments): anything YAML gives but NaN or
# infinity.
StepValue = Annotated[Any, AfterValidator(_finite)]
LabelName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


class ParamSpec(Model):
    """A value taken from the alert and checked against `pattern` before any template sees it.

    `pattern` must match the WHOLE value (re.fullmatch), so `^[a-z0-9.-]+$` and `[a-z0-9.-]+`
    mean the same; a label that does not match makes the action fail with nothing run.
    """

    label: LabelName | None = None
    annotation: str | None = None
    pattern: str = Field(min_length=1)
    default: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ParamSpec:
        if (self.label is None) == (self.annotation is None):
            raise ValueError("give exactly one of label or annotation")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return self


class ScriptStep(Model):
    argv: list[Template] = Field(min_length=1)
    env: dict[str, Template] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: Duration = 60.0
    kill_grace: Duration = 5.0


class SqlStep(Model):
    database: Name
    query: str = Field(min_length=1)
    params: dict[str, StepValue] = Field(default_factory=dict)
    timeout: Duration = 30.0


class CeleryStep(Model):
    app: Name
    task: str = Field(min_length=1)
    args: list[StepValue] = Field(default_factory=list)
    kwargs: dict[str, StepValue] = Field(default_factory=dict)
    queue: str | None = None
    wait: Duration | None = None


class RepairStep(Model):
    check: Name
    sql: str = Field(min_length=1)
    params: dict[str, StepValue] = Field(default_factory=dict)
    timeout: Duration = 30.0


class UndoRule(Model):
    script: ScriptStep | None = None
    sql: SqlStep | None = None

    @model_validator(mode="after")
    def _one(self) -> UndoRule:
        if (self.script is None) == (self.sql is None):
            raise ValueError("undo takes exactly one of script or sql")
        return self


StepKind = Literal["script", "sql", "celery", "repair"]


class StepRule(Model):
    name: str = Field(min_length=1, max_length=200)
    script: ScriptStep | None = None
    sql: SqlStep | None = None
    celery: CeleryStep | None = None
    repair: RepairStep | None = None
    undo: UndoRule | None = None

    @model_validator(mode="after")
    def _one(self) -> StepRule:
        kinds = [k for k in ("script", "sql", "celery", "repair") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a step takes exactly one of script, sql, celery or repair")
        return self

    @property
    def kind(self) -> StepKind:
        for k in ("script", "sql", "celery", "repair"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated step without a kind")


class Limit(Model):
    """Circuit breaker: at most `count` actions per rule and target within `per`."""

    count: int = Field(ge=1)
    per: Duration

    @model_validator(mode="after")
    def _positive(self) -> Limit:
        if self.per <= 0:
            raise ValueError("per must be a positive duration")
        return self


class Rule(Model):
    name: Name
    match: dict[LabelName, str] = Field(default_factory=dict)
    match_re: dict[LabelName, str] = Field(default_factory=dict)
    on: Literal["firing", "resolved"] = "firing"
    # The labels that identify what is being repaired (cooldown, limit); default: all labels.
    target: list[LabelName] | None = None
    cooldown: Duration = 0.0
    max_concurrent: int = Field(default=1, ge=1)
    approval: bool = False
    dry_run: bool = False
    on_interrupt: Literal["retry", "fail"] = "fail"
    transaction: Literal["none", "single"] = "none"
    limit: Limit | None = None
    params: dict[ParamName, ParamSpec] = Field(default_factory=dict)
    steps: list[StepRule] = Field(min_length=1)

    @model_validator(mode="after")
    def _matchers(self) -> Rule:
        if not self.match and not self.match_re:
            raise ValueError("a rule needs match or match_re (a rule matching every alert)")
        return self


class RulesFile(Model):
    rules: list[Rule] = Field(default_factory=list)
