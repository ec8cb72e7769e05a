"""The plan of an action: its steps fully rendered, stored in the journal and bound by approval.

At ingest the rule's steps are rendered with the alert (templates resolved, labels checked
against their patterns) into a `Plan`. The executor runs the plan as stored, never the rule as
it reads today, so an approver approves exactly what will run: `plan_hash` is the SHA-256 of
the canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

__all__ = ["HostsSpec", "Plan", "PlanStep", "canonical_json", "floats_in", "plain_numbers"]


def canonical_json(data: Any, *, plain_numbers: bool = False) -> str:
    """`json.dumps(data, sort_keys=True, separators=(",", ":"))`: the text plan hashes and
    rule targets are of.

    It never changes between versions: an approval, the executor's check of a stored plan
    and the cooldown of recorded actions compare it. So orjson, for a tenth of json's time,
    writes it only where its output is json's: the caller vouches with `plain_numbers` that
    every float in `data` is finite and 0 or between 1e-4 and 1e16 in size (outside that,
    json writes "1e-07" where orjson writes "1e-7"), the text is all ASCII without DEL (json
    escapes the rest), and orjson refused nothing (keys that are not strings, integers beyond
    64 bits, surrogates).
    """
    if plain_numbers:
        try:
            fast = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass
        else:
            if fast.isascii() and b"\x7f" not in fast:
                return fast.decode()
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def floats_in(*values: Any) -> Iterator[float]:
    """Every float in `values`, through lists, tuples and dicts."""
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)


def plain_numbers(*values: Any) -> bool:
    """True when every float in `values` is one json and orjson write alike: finite, and 0 or
    between 1e-4 and 1e16 in size."""
    return all(v == 0 or 1e-4 <= abs(v) < 1e16 for v in floats_in(*values))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptSpec(_Frozen):
    """Run `argv` directly (never through a shell); the alert JSON arrives on stdin."""

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)  # TASKMEDIC_LABEL_<NAME> and friends
    stdin: str = ""
    cwd: str | None = None
    timeout: float = 60.0
    kill_grace: float = 5.0


class SqlSpec(_Frozen):
    """One parameterised statement against a named database of `databases:`."""

    database: str
    query: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float = 30.0


class CelerySpec(_Frozen):
    """Send a task to a configured Celery app; optionally wait for its result."""

    app: str
    task: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None
    wait: float | None = None  # seconds to wait for the result; None sends and moves on


# In a repair's http request, the confirmed key: the plan keeps it as this text, replaced when
# each request is sent (the key comes from the check, not from the alert).
REPAIR_KEY = "{{ key }}"


class BasicAuthSpec(_Frozen):
    username: str
    password_file: str  # read when the request is sent; the password is never in a plan


class HttpSpec(_Frozen):
    """One HTTP request; header values from `header_files` and the basic-auth password are
    read from their files when it is sent."""

    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    header_files: dict[str, str] = Field(default_factory=dict)
    basic_auth: BasicAuthSpec | None = None
    body: Any = None
    expect_status: list[int] | None = None  # None: any 2xx
    expect_json: dict[str, Any] | None = None
    timeout: float = 10.0


class RepairSpec(_Frozen):
    """Re-run exporter check `check` now, then repair the confirmed keys only: with `query`
    on `database` (default: the check's), which receives `%(keys)s` plus `params`, or with
    `http` sent once per key, `{{ key }}` in its url and json replaced by the key."""

    check: str
    database: str | None = None
    query: str | None = None
    http: HttpSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float = 30.0


class VerifySpec(_Frozen):
    """Wait until the exporter's `series{labels}` equals `equals`, at most `within` seconds;
    `url` None: the exporter of the healer's config."""

    series: str
    labels: dict[str, str] = Field(default_factory=dict)
    equals: float = 0.0
    within: float = 300.0
    interval: float = 5.0
    url: str | None = None


class UndoSpec(_Frozen):
    """What undoes a completed step when a later step fails: a script or SQL."""

    script: ScriptSpec | None = None
    sql: SqlSpec | None = None


class HostsSpec(_Frozen):
    """Where a script step runs when not on the healer's host: once per host, through the
    agent serving that host's queue, `batch` hosts at a time (None: all at once). The step
    fails when more than `tolerance` hosts fail; after the batch holding a host of
    `pause_after` it waits for somebody to resume it."""

    hosts: list[str] = Field(min_length=1)
    batch: int | None = None
    tolerance: int = 0
    pause_after: list[str] = Field(default_factory=list)


class PlanStep(_Frozen):
    name: str
    kind: Literal["script", "sql", "celery", "repair", "http", "verify"]
    on: HostsSpec | None = None  # None: the healer's own host
    script: ScriptSpec | None = None
    sql: SqlSpec | None = None
    celery: CelerySpec | None = None
    repair: RepairSpec | None = None
    http: HttpSpec | None = None
    verify: VerifySpec | None = None
    undo: UndoSpec | None = None

    @model_serializer(mode="wrap")
    def _without_on(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A step on the healer's host is written (and hashed) as before steps could run
        elsewhere: plans recorded by an earlier version still match their plan_hash."""
        data: dict[str, Any] = handler(self)
        if data.get("on") is None:
            data.pop("on", None)
        return data


class Plan(_Frozen):
    """Everything the executor needs, and nothing it has to look up in today's rules."""

    rule: str
    steps: list[PlanStep]
    # single: every sql/repair step on the same database commits together, all or nothing
    transaction: Literal["none", "single"] = "none"
    dry_run: bool = False
    on_interrupt: Literal["retry", "fail"] = "fail"
    max_concurrent: int = 1
    alert: dict[str, Any] = Field(default_factory=dict)  # the alert as received (labels, …)

    def canonical(self) -> str:
        return canonical_json(self.model_dump(mode="json"), plain_numbers=self._plain_numbers())

    def _plain_numbers(self) -> bool:
        """A plan's floats are its steps' timeouts and what their parameters hold; `alert` is
        strings only (Alert.as_json)."""
        values: list[Any] = []
        for step in self.steps:
            specs: list[Any] = [step.script, step.sql, step.celery, step.repair, step.verify]
            specs += [step.http, step.repair.http if step.repair is not None else None]
            if step.undo is not None:
                specs += [step.undo.script, step.undo.sql]
            for spec in specs:
                if isinstance(spec, ScriptSpec):
                    values += [spec.timeout, spec.kill_grace]
                elif isinstance(spec, SqlSpec | RepairSpec):
                    values += [spec.timeout, spec.params]
                elif isinstance(spec, CelerySpec):
                    values += [spec.wait, spec.args, spec.kwargs]
                elif isinstance(spec, HttpSpec):
                    values += [spec.timeout, spec.body, spec.expect_json]
                elif isinstance(spec, VerifySpec):
                    values += [spec.equals, spec.within, spec.interval]
        return plain_numbers(*values)

    def hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()
