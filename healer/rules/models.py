"""The models a rule file is validated against: a rule, its parameters, steps and limits.

They check what one value can tell on its own; `healer.rules.loading` adds the checks that
need the whole file or the config (templates, unique names, databases, apps and checks).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from exporter.base.types import Duration, Model, Name
from healer.agents.settings import HostName
from healer.plan import floats_in

__all__ = [
    "STEP_KINDS",
    "BasicAuthRef",
    "CeleryStep",
    "HttpStep",
    "Limit",
    "OnRule",
    "ParamSpec",
    "RepairStep",
    "Rule",
    "RulesFile",
    "ScriptStep",
    "SqlStep",
    "StepKind",
    "StepRule",
    "UndoRule",
    "VerifyStep",
]

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


class BasicAuthRef(Model):
    """HTTP basic auth whose password stays in a file, read when the request is sent."""

    username: str = Field(min_length=1)
    password_file: str = Field(min_length=1)


def _http_url(value: str) -> str:
    # A validator, not a schema pattern: in the file the URL may start with ${VAR}, which
    # is expanded before the model sees it.
    if not re.match(r"^https?://[^/\s]", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


HttpUrlTemplate = Annotated[str, AfterValidator(_http_url)]

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpStep(Model):
    """One request to an application's own API.

    `url`, `headers` and `json` are templates of declared parameters; secrets come from
    files (`header_files`, `basic_auth.password_file`) so that no plan or journal row holds
    them. The answer must have a status of `expect_status` (default: any 2xx) and, when
    `expect_json` is given, hold those top-level keys with those values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    method: HttpMethod = "POST"
    url: HttpUrlTemplate
    headers: dict[str, Template] = Field(default_factory=dict)
    header_files: dict[str, str] = Field(default_factory=dict)
    basic_auth: BasicAuthRef | None = None
    body: StepValue = Field(default=None, alias="json")
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        default=None, min_length=1
    )
    expect_json: dict[str, StepValue] | None = None
    timeout: Duration = 10.0


class RepairStep(Model):
    """Re-run exporter check `check` now and repair only the keys it confirms, with `sql` (on
    `database`, default the check's own) or with one `http` request per key (`{{ key }}` in
    its url or json is the key)."""

    check: Name
    # The database the repair writes to: a login with write rights, where the check's own
    # database entry is the exporter's read-only one.
    database: Name | None = None
    sql: str | None = Field(default=None, min_length=1)
    http: HttpStep | None = None
    params: dict[str, StepValue] = Field(default_factory=dict)
    timeout: Duration = 30.0

    @model_validator(mode="after")
    def _one_way(self) -> RepairStep:
        if (self.sql is None) == (self.http is None):
            raise ValueError("a repair takes exactly one of sql or http")
        if self.http is not None and self.database is not None:
            raise ValueError("database is for sql repairs; an http repair writes nothing here")
        return self


class VerifyStep(Model):
    """Wait until the exporter shows `series{labels}` equal to `equals`, for at most `within`.

    Reads the exporter of this config (`exporter.listen`) unless `url` names a `/metrics`.
    """

    series: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    labels: dict[LabelName, Template] = Field(default_factory=dict)
    equals: float = 0.0
    within: Duration = 300.0
    interval: Duration = 5.0
    url: HttpUrlTemplate | None = None

    @model_validator(mode="after")
    def _positive(self) -> VerifyStep:
        if self.within <= 0 or self.interval <= 0:
            raise ValueError("within and interval must be positive durations")
        if not math.isfinite(self.equals):
            raise ValueError("equals must be a finite number")
        return self


class UndoRule(Model):
    script: ScriptStep | None = None
    sql: SqlStep | None = None

    @model_validator(mode="after")
    def _one(self) -> UndoRule:
        if (self.script is None) == (self.sql is None):
            raise ValueError("undo takes exactly one of script or sql")
        return self


class OnRule(Model):
    """Where a script step runs, when not on the healer's host.

    `hosts`: once on each, through the agent serving that host, `batch` at a time (default:
    all at once); the step fails when more than `tolerance` hosts fail, and waits after the
    batch holding a host of `pause_after` until somebody with the approve role resumes it.
    `host_from_label`: on the one host an alert label names; the value must match `pattern`
    in full, and when the pattern has a group named `host`, that group is the host (so
    `(?P<host>[a-z0-9.-]+):[0-9]+` takes the host of an `instance` label).
    """

    hosts: list[HostName] | None = Field(default=None, min_length=1)
    host_from_label: LabelName | None = None
    pattern: str | None = None
    batch: int | None = Field(default=None, ge=1)
    tolerance: int = Field(default=0, ge=0)
    pause_after: list[HostName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> OnRule:
        if (self.hosts is None) == (self.host_from_label is None):
            raise ValueError("give exactly one of hosts or host_from_label")
        if self.host_from_label is not None:
            if self.pattern is None:
                raise ValueError("host_from_label needs a pattern the label must match")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
            if self.pause_after or self.batch is not None:
                raise ValueError("batch and pause_after are for a list of hosts")
        elif self.pattern is not None:
            raise ValueError("pattern is for host_from_label")
        if self.hosts is not None:
            if len(set(self.hosts)) != len(self.hosts):
                raise ValueError("a host is listed twice")
            unknown = [h for h in self.pause_after if h not in self.hosts]
            if unknown:
                raise ValueError(f"pause_after names hosts not in hosts: {', '.join(unknown)}")
        return self


StepKind = Literal["script", "sql", "celery", "repair", "http", "verify"]
STEP_KINDS: tuple[StepKind, ...] = ("script", "sql", "celery", "repair", "http", "verify")


class StepRule(Model):
    name: str = Field(min_length=1, max_length=200)
    on: OnRule | None = None  # default: the healer's own host
    script: ScriptStep | None = None
    sql: SqlStep | None = None
    celery: CeleryStep | None = None
    repair: RepairStep | None = None
    http: HttpStep | None = None
    verify: VerifyStep | None = None
    undo: UndoRule | None = None

    @model_validator(mode="after")
    def _one(self) -> StepRule:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step takes exactly one of {', '.join(STEP_KINDS)}")
        if self.on is not None and self.script is None:
            raise ValueError("on: is for script steps (other kinds run on the healer's host)")
        return self

    @property
    def kind(self) -> StepKind:
        for k in STEP_KINDS:
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
