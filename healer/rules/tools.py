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

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from healer.config import HealerConfig
from healer.ingest import decision_inputs, plan_for
from healer.journal import replay as journal_replay
from healer.plan import Plan, PlanStep
from healer.rules import RuleSet
from healer.rules.models import Rule
from healer.webhook import Alert, BadPayload, UnsupportedVersion, parse_notification

__all__ = [
    "RuleOutcome",
    "describe_step",
    "first_firing",
    "load_alerts",
    "replay",
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


def load_alerts(path: Path) -> list[Alert]:
    """Alerts of a webhook payload file; a file holding one alert object works too."""
    body = path.read_bytes()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and "alerts" not in data:
        try:
            return [Alert.model_validate(data)]
        except ValueError as exc:
            raise ValueError(f"{path}: not an alert: {exc}") from None
    try:
        notification, _ = parse_notification(body)
    except (BadPayload, UnsupportedVersion) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return notification.alerts


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


async def replay(
    conn: AsyncConnection[Any], config: HealerConfig, rules: RuleSet, rows: list[dict[str, Any]]
) -> list[AlertOutcome]:
    """Stored alerts (oldest first) through today's rules, decided by the journal as ingest's."""
    seen: set[tuple[str, str, datetime, str]] = set()
    history: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    out = []
    for row in rows:
        alert = Alert.model_validate(
            {
                "status": row["status"],
                "labels": row["labels"],
                "annotations": row["annotations"],
                "startsAt": row["starts_at"],
                "endsAt": row["ends_at"],
                "generatorURL": row["generator_url"],
                "fingerprint": row["fingerprint"],
            }
        )
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
        return (
            f"sql on {step.sql.database}: {step.sql.query} "
            f"params={json.dumps(step.sql.params, sort_keys=True)}"
        )
    if step.celery is not None:
        c = step.celery
        args = ", ".join(
            [json.dumps(a) for a in c.args] + [f"{k}={json.dumps(v)}" for k, v in c.kwargs.items()]
        )
        queue = f" queue={c.queue}" if c.queue else ""
        return f"celery {c.app}: {c.task}({args}){queue} wait={_seconds(c.wait)}"
    if step.repair is not None:
        r = step.repair
        return (
            f"repair check {r.check}, then on confirmed keys: {r.query} "
            f"params={json.dumps(r.params, sort_keys=True)}"
        )
    return step.kind


def format_outcomes(outcomes: list[AlertOutcome]) -> str:
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
                lines.append(f"    plan sha256 {r.plan.hash()}")
            for i, step in enumerate(r.plan.steps, 1):
                lines.append(f"    {i}. {step.name}: {describe_step(step)}")
                if step.undo is not None:
                    undo = PlanStep(
                        name="undo",
                        kind="script" if step.undo.script else "sql",
                        script=step.undo.script,
                        sql=step.undo.sql,
                    )
                    lines.append(f"       undo: {describe_step(undo)}")
        if o.received_at is not None:
            if o.recorded:
                got = ", ".join(f"{x['rule']} #{x['id']} {x['state']}" for x in o.recorded)
            else:
                got = "no action"
            lines.append(f"  recorded then: {got}")
    lines.append("Nothing was executed.")
    return "\n".join(lines)
