"""`taskmedic rules test` and `rules replay`: what the rules would do, with nothing executed.

`test` renders the rules for the alerts of a payload file exactly as ingest would (the same
matching, parameters, templates and plan hash), with no journal. `replay` takes the alerts the
journal received since a moment and runs them through today's rules in the order they arrived,
next to what really happened. Whether an alert becomes an action is decided in one place, the
journal's `taskmedic_decide`: ingest runs it as it records, replay asks it for each alert with
the counts of the actions replay itself would have created before (a repeat of the same firing
is a duplicate; skipped actions do not count, as in the journal).
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from pydantic import ValidationError

from healer.config import HealerConfig
from healer.ingest import decision_inputs, plan_for
from healer.journal import replay as journal_replay
from healer.plan import HttpSpec, Plan, PlanStep
from healer.rules import RuleSet
from healer.rules.models import Rule
from healer.terminal import printable
from healer.webhook import Alert, BadPayload, UnsupportedVersion, parse_notification

__all__ = [
    "RuleOutcome",
    "alert_from_labels",
    "describe_step",
    "first_firing",
    "load_alerts",
    "replay",
    "step_lines",
    "test_alerts",
]


@dataclass
class RuleOutcome:
    rule: str
    source: str
    state: str
    reason: str
    plan: Plan

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "source": self.source,
            "state": self.state,
            "reason": self.reason,
            "plan_hash": self.plan.hash(),
            "plan": self.plan.model_dump(mode="json"),
        }


@dataclass
class AlertOutcome:
    alert: Alert
    rules: list[RuleOutcome] = field(default_factory=list)
    received_at: datetime | None = None
    recorded: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fingerprint": self.alert.fingerprint,
            "status": self.alert.status,
            "labels": self.alert.labels,
            "starts_at": self.alert.starts_at.isoformat(),
            "rules": [r.as_json() for r in self.rules],
        }
        if self.received_at is not None:
            out["received_at"] = self.received_at.isoformat()
            out["recorded"] = self.recorded
        return out


# What to write for each field of an alert a file may get wrong (`rules test --alert`).
_ALERT_FIELDS = {
    "fingerprint": '"fingerprint": "3f2a9c0d1e7b5a64" (Alertmanager sends one with each '
    "alert; any string that names the alert will do, or use --label instead of --alert, "
    "which makes one)",
    "startsAt": '"startsAt": "2024-05-01T12:00:00Z" (an RFC 3339 time with its offset)',
    "endsAt": '"endsAt": "0001-01-01T00:00:00Z" for a firing alert, or when it resolved',
    "status": '"status": "firing" or "resolved"',
    "labels": '"labels": {"alertname": "...", ...} (label names to string values)',
    "annotations": '"annotations": {"summary": "..."} (names to string values)',
    "version": '"version": "4" (Alertmanager\'s webhook version)',
    "receiver": '"receiver": "taskmedic" (the receiver\'s name in alertmanager.yml)',
    "alerts": '"alerts": [{...}, ...] (or give the file one alert object alone)',
}


def _what_to_write(path: str, message: str) -> str:
    """`path: message`, and for a field of an alert, what to write there."""
    field = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
    hint = _ALERT_FIELDS.get(field)
    return f"{path}: {message}" + (f"; write {hint}" if hint else "")


def load_alerts(path: Path) -> list[Alert]:
    """Alerts of a webhook payload file; a file holding one alert object works too.

    A problem is reported as `FILE: $.json.path: what is wrong; write ...`, never as the
    validator's own dump."""
    body = path.read_bytes()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and "alerts" not in data:
        try:
            return [Alert.model_validate(data)]
        except ValidationError as exc:
            err = exc.errors(include_input=False, include_url=False)[0]
            where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            msg = "required field is missing" if err["type"] == "missing" else err["msg"]
            raise ValueError(f"{path}: {_what_to_write(where, msg)}") from None
    try:
        notification, _ = parse_notification(body)
    except BadPayload as exc:
        raise ValueError(f"{path}: {_what_to_write(exc.path, exc.message)}") from None
    except UnsupportedVersion as exc:
        raise ValueError(f"{path}: {exc}") from None
    return notification.alerts


LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def alert_from_labels(
    labels: list[str], annotations: list[str] | None = None, *, resolved: bool = False
) -> Alert:
    """An alert as Alertmanager would send it, from `NAME=VALUE` words of a command line.

    Its fingerprint is a hash of the labels (as Alertmanager's is) and it starts now.
    """

    def pairs(words: list[str], what: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for word in words:
            name, eq, value = word.partition("=")
            if not eq or not LABEL_NAME.fullmatch(name):
                raise ValueError(f"{what} {word!r}: write NAME=VALUE (NAME as a Prometheus label)")
            if name in out:
                raise ValueError(f"{what} {name!r} is given twice")
            out[name] = value
        return out

    got = pairs(labels, "label")
    if "alertname" not in got:
        raise ValueError("give the alert's name too: --label alertname=NAME")
    fingerprint = hashlib.sha256(json.dumps(got, sort_keys=True).encode()).hexdigest()[:16]
    now = datetime.now(UTC)
    return Alert.model_validate(
        {
            "status": "resolved" if resolved else "firing",
            "labels": got,
            "annotations": pairs(annotations or [], "annotation"),
            "startsAt": now.isoformat(),
            "endsAt": now.isoformat() if resolved else "0001-01-01T00:00:00Z",
            "fingerprint": fingerprint,
        }
    )


def first_firing(rule: Rule, render_error: str | None) -> tuple[str, str]:
    """The state and reason of an action with no recent action of its rule and target.

    `rules test` has no journal to ask. With nothing recent, cooldown and the circuit breaker
    cannot skip an action, and what remains of `taskmedic_decide` is the rule's own: a plan
    that cannot be rendered fails, an approval waits. A test holds this to the journal's answer.
    """
    if render_error is not None:
        return "failed", render_error
    if rule.approval:
        return "awaiting_approval", "waiting for approval"
    return "pending", ""


def test_alerts(config: HealerConfig, rules: RuleSet, alerts: list[Alert]) -> list[AlertOutcome]:
    """Each alert with the rules it matches and the plan each would run (nothing executed)."""
    out = []
    for alert in alerts:
        o = AlertOutcome(alert)
        for rule in rules.matching(alert.labels, alert.status):
            plan, error = plan_for(rule, alert, dry_run=config.healer.dry_run)
            state, reason = first_firing(rule.rule, error)
            o.rules.append(RuleOutcome(rule.name, rule.source, state, reason, plan))
        out.append(o)
    return out


# How Alertmanager writes "not ended" (Go's zero time); the journal keeps it as NULL.
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def _received(row: dict[str, Any]) -> Alert:
    """The alert as ingest saw it, so that an unchanged rule renders the very plan (and plan
    hash) that was recorded: from a recorded plan when the alert started an action, else
    rebuilt from the journal's columns (times in UTC, a missing endsAt as the zero time)."""
    if isinstance(row.get("received"), dict):
        return Alert.model_validate(row["received"])
    ends = row["ends_at"]
    return Alert.model_validate(
        {
            "status": row["status"],
            "labels": row["labels"],
            "annotations": row["annotations"],
            "startsAt": row["starts_at"].astimezone(UTC),
            "endsAt": ends.astimezone(UTC) if ends is not None else _GO_ZERO_TIME,
            "generatorURL": row["generator_url"],
            "fingerprint": row["fingerprint"],
        }
    )


async def replay(
    conn: AsyncConnection[Any], config: HealerConfig, rules: RuleSet, rows: list[dict[str, Any]]
) -> list[AlertOutcome]:
    """Stored alerts (oldest first) through today's rules, decided by the journal as ingest's."""
    seen: set[tuple[str, str, datetime, str]] = set()
    history: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    out = []
    for row in rows:
        alert = _received(row)
        at: datetime = row["received_at"]
        o = AlertOutcome(alert, received_at=at, recorded=row["actions"])
        for rule in rules.matching(alert.labels, alert.status):
            plan, error = plan_for(rule, alert, dry_run=config.healer.dry_run)
            key = (rule.name, alert.fingerprint, alert.starts_at, alert.status)
            if key in seen:
                o.rules.append(
                    RuleOutcome(
                        rule.name,
                        rule.source,
                        "duplicate",
                        "the same firing already has an action",
                        plan,
                    )
                )
                continue
            seen.add(key)
            past = history[(rule.name, rule.target_of(alert.labels))]
            r = rule.rule
            in_cooldown = sum(1 for t in past if (at - t).total_seconds() < r.cooldown)
            per = r.limit.per if r.limit else 0.0
            in_limit = sum(1 for t in past if (at - t).total_seconds() < per)
            state, reason = await journal_replay.decide(
                conn, decision_inputs(r, error), in_cooldown=in_cooldown, in_limit=in_limit
            )
            if state not in ("skipped", "cancelled"):
                past.append(at)
            o.rules.append(RuleOutcome(rule.name, rule.source, state, reason, plan))
        out.append(o)
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def describe_step(step: PlanStep) -> str:
    """One line saying what a step would do: argv, SQL and parameters, task signature."""
    if step.script is not None:
        s = step.script
        return f"script: {json.dumps(s.argv)} (timeout {_seconds(s.timeout)})"
    if step.sql is not None:
        params = f"params={json.dumps(step.sql.params, sort_keys=True)}"
        return _with_sql(f"sql on {step.sql.database}", step.sql.query, params)
    if step.celery is not None:
        c = step.celery
        args = ", ".join(
            [json.dumps(a) for a in c.args] + [f"{k}={json.dumps(v)}" for k, v in c.kwargs.items()]
        )
        queue = f" queue={c.queue}" if c.queue else ""
        return f"celery {c.app}: {c.task}({args}){queue} wait={_seconds(c.wait)}"
    if step.repair is not None:
        r = step.repair
        if r.http is not None:
            return f"repair check {r.check}, then for each confirmed key: {_http(r.http)}"
        return _with_sql(
            f"repair check {r.check}, then on confirmed keys"
            f"{f' (on {r.database})' if r.database else ''}",
            r.query or "",
            f"params={json.dumps(r.params, sort_keys=True)}",
        )
    if step.http is not None:
        return _http(step.http)
    if step.verify is not None:
        v = step.verify
        labels = ",".join(f'{k}="{val}"' for k, val in sorted(v.labels.items()))
        return (
            f"verify {v.series}{{{labels}}} == {v.equals:g} within {_seconds(v.within)}"
            f"{f' at {v.url}' if v.url else ''}"
        )
    return step.kind


def _with_sql(head: str, query: str, params: str) -> str:
    """`head: query params=...`; SQL written over several lines keeps its lines and their
    indentation, on the lines after the head (`step_lines` indents them)."""
    if "\n" not in query.strip():
        return f"{head}: {query.strip()} {params}"
    return f"{head} {params}:\n{textwrap.dedent(query).strip(chr(10)).rstrip()}"


def step_lines(prefix: str, step: PlanStep) -> list[str]:
    """`prefix` and the step's description; the lines of multi-line SQL below it, indented
    to start under the description (each line is escaped on its own when printed)."""
    first, *rest = describe_step(step).split("\n")
    indent = " " * len(prefix)
    return [prefix + first, *(indent + "  " + line for line in rest)]


def _http(h: HttpSpec) -> str:
    body = f" json={json.dumps(h.body, sort_keys=True)}" if h.body is not None else ""
    want = "2xx" if h.expect_status is None else "/".join(map(str, h.expect_status))
    return f"http {h.method} {h.url}{body} expect {want} (timeout {_seconds(h.timeout)})"


def _as_recorded(r: RuleOutcome, recorded: list[dict[str, Any]]) -> str:
    """How a replayed plan compares with the plan the same rule recorded for the alert."""
    then = next((x for x in recorded if x["rule"] == r.rule and x.get("plan_hash")), None)
    if then is None:
        return ""
    if then["plan_hash"] == r.plan.hash():
        return f" (as recorded in #{then['id']})"
    return (
        f" (#{then['id']} recorded {then['plan_hash'][:12]}: the rule's steps, its parameters "
        "or dry_run changed since)"
    )


def format_outcomes(outcomes: list[AlertOutcome]) -> str:
    """The outcomes as terminal lines; text from alerts has its control characters escaped."""
    lines: list[str] = []
    for o in outcomes:
        a = o.alert
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(a.labels.items()))
        when = f"{o.received_at.isoformat()} " if o.received_at else ""
        lines.append(f"{when}{a.status} {{{labels}}} fingerprint {a.fingerprint}")
        if not o.rules:
            lines.append("  no rule matches")
        for r in o.rules:
            state = "would be " + r.state if r.state != "duplicate" else "duplicate"
            extra = f": {r.reason}" if r.reason else ""
            dry = " (dry run)" if r.plan.dry_run else ""
            lines.append(f"  rule {r.rule} ({r.source}): {state}{dry}{extra}")
            if r.plan.steps:
                lines.append(f"    plan sha256 {r.plan.hash()}{_as_recorded(r, o.recorded)}")
            for i, step in enumerate(r.plan.steps, 1):
                lines.extend(step_lines(f"    {i}. {step.name}: ", step))
                if step.undo is not None:
                    undo = PlanStep(
                        name="undo",
                        kind="script" if step.undo.script else "sql",
                        script=step.undo.script,
                        sql=step.undo.sql,
                    )
                    lines.extend(step_lines("       undo: ", undo))
        if o.received_at is not None:
            if o.recorded:
                got = ", ".join(f"{x['rule']} #{x['id']} {x['state']}" for x in o.recorded)
            else:
                got = "no action"
            lines.append(f"  recorded then: {got}")
    lines.append("Nothing was executed.")
    return "\n".join(printable(line) for line in lines)
