"""POST /alerts: one Alertmanager notification becomes ONE journal transaction, then 200.

The notification, its alerts and every action they start (with its steps, events and
notifications to the executors) commit together. Actions are keyed by (rule, fingerprint,
startsAt, trigger) with a unique constraint, so an Alertmanager retry or the copy sent by the
other replica of an HA pair never starts a second action. Cooldown, the circuit breaker and
approval are decided inside that transaction under an advisory lock per rule and target, so
concurrent requests and several healer processes decide one after another.

That transaction is one statement, one round trip: the locks, then `taskmedic_ingest`
(migration 0002) writing every row. Ingest used to send a statement per row, each a round
trip, and spent most of its time waiting on them. Notifications that arrive together share
that statement and its commit (group commit, `healer.journal.ingest_writer`).

A 5xx means only "not recorded, send again": the journal was unreachable (503) or the healer is
shutting down (503). A remediation that fails later is recorded as failed; the webhook already
answered 200 and Alertmanager does not resend.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from healer import appkeys
from healer.config import HealerSettings
from healer.errors import JournalUnavailable
from healer.journal.ingest_writer import IngestWriter, Notice
from healer.metrics import HealerMetrics
from healer.plan import Plan
from healer.rules import CompiledRule, RuleSet
from healer.rules.models import Rule
from healer.rules.planning import RenderError, empty_plan, render
from healer.webhook import Alert, BadPayload, Notification, UnsupportedVersion, parse_notification

__all__ = [
    "IngestResult",
    "Prepared",
    "circuit_reason",
    "cooldown_reason",
    "decision_inputs",
    "ingest",
    "plan_for",
    "post_alerts",
    "prepare",
    "read_body",
    "record",
]

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def cooldown_reason(rule: Rule) -> str:
    """Why an action of `rule` is skipped inside its cooldown."""
    return (
        f"cooldown: an action of this rule for the same target was created within "
        f"the last {_duration(rule.cooldown)}"
    )


def circuit_reason(rule: Rule, in_limit: str) -> str:
    """Why an action of `rule` is skipped past its limit, `in_limit` actions in the window."""
    if rule.limit is None:
        return ""
    return (
        f"circuit open: {in_limit} actions of this rule for the same target within "
        f"{_duration(rule.limit.per)} (limit {rule.limit.count}); a human should look"
    )


def decision_inputs(rule: Rule, render_error: str | None) -> dict[str, Any]:
    """What the journal's taskmedic_decide (migration 0002), the one place an alert's action is
    decided, takes besides the two counts: the rule's settings and the reasons, worded here."""
    return {
        "render_error": render_error,
        "cooldown": rule.cooldown,
        "per": rule.limit.per if rule.limit else 0.0,
        "limit_count": rule.limit.count if rule.limit else None,
        "approval": rule.approval,
        "cooldown_reason": cooldown_reason(rule),
        "circuit_reason": circuit_reason(rule, "{in_limit}"),
    }


def plan_for(rule: CompiledRule, alert: Alert, *, dry_run: bool) -> tuple[Plan, str | None]:
    """The rendered plan, or an empty plan and the reason nothing may run."""
    try:
        return render(rule.rule, alert, dry_run=dry_run), None
    except RenderError as exc:
        return empty_plan(rule.rule, alert, dry_run=dry_run), str(exc)


@dataclass
class _Work:
    alert: Alert
    rule: CompiledRule
    target: str
    plan: Plan
    render_error: str | None


@dataclass
class ActionRecord:
    id: int
    rule: str
    fingerprint: str
    state: str
    reason: str
    circuit_open: bool = False


@dataclass
class IngestResult:
    notification_id: int
    alerts: int
    actions: list[ActionRecord] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "alerts": self.alerts,
            "actions": [
                {
                    "id": a.id,
                    "rule": a.rule,
                    "fingerprint": a.fingerprint,
                    "state": a.state,
                    "reason": a.reason,
                }
                for a in self.actions
            ],
            "duplicates": self.duplicates,
            "cancelled": self.cancelled,
        }


@dataclass
class Prepared:
    """A notification ready for the journal, and of the rest only what its answer needs.

    Under a storm thousands of requests wait for the journal at once. The parsed payload, its
    models and the rendered plans are most of a request's memory (about 12 of its 17 KiB of
    Python objects) and are needed only to build the notice: a request waits with this.
    """

    notice: Notice
    statuses: list[str]  # each alert's status, in order
    truncated_alerts: int
    work: list[tuple[str, str]]  # (rule, fingerprint) of each action it may start, in order


def prepare(
    notification: Notification, raw: dict[str, Any], rules: RuleSet, settings: HealerSettings
) -> Prepared:
    """Match the rules and render the plans: what the journal is sent, nothing written yet."""
    work = [
        _Work(
            alert,
            rule,
            rule.target_of(alert.labels),
            *plan_for(rule, alert, dry_run=settings.dry_run),
        )
        for alert in notification.alerts
        for rule in rules.matching(alert.labels, alert.status)
    ]
    return Prepared(
        _notice(notification, raw, work, settings),
        [a.status for a in notification.alerts],
        notification.truncated_alerts,
        [(w.rule.name, w.alert.fingerprint) for w in work],
    )


async def record(
    writer: IngestWriter, prepared: Prepared, metrics: HealerMetrics | None = None
) -> IngestResult:
    """Record the notification and start its actions in one transaction (JournalUnavailable)."""
    recorded = await writer.record(prepared.notice)
    result = _result(prepared, recorded)
    if metrics is not None:
        _count(metrics, prepared, result)
    return result


async def ingest(
    writer: IngestWriter,
    notification: Notification,
    raw: dict[str, Any],
    rules: RuleSet,
    settings: HealerSettings,
    metrics: HealerMetrics | None = None,
) -> IngestResult:
    """prepare() then record(), for callers that keep the notification anyway."""
    return await record(writer, prepare(notification, raw, rules, settings), metrics)


def _count(metrics: HealerMetrics, prepared: Prepared, result: IngestResult) -> None:
    for status in prepared.statuses:
        metrics.alerts_received.labels(status).inc()
    if prepared.truncated_alerts:
        metrics.alerts_truncated.inc(prepared.truncated_alerts)
    for a in result.actions:
        if a.state in ("skipped", "failed"):
            metrics.actions_total.labels(a.rule, a.state).inc()
        if a.circuit_open:
            metrics.rule_circuit_open.labels(a.rule).set(1)


def _notice(
    n: Notification, raw: dict[str, Any], work: list[_Work], settings: HealerSettings
) -> Notice:
    """The arguments of taskmedic_ingest (migration 0002) as one JSON object, and its locks."""
    index = {id(alert): i for i, alert in enumerate(n.alerts)}
    plans: list[str] = []
    items: list[dict[str, Any]] = []
    for w in work:
        rule = w.rule.rule
        # One rendering of the plan is both the stored JSON and the text its hash is of.
        canonical = w.plan.canonical()
        plans.append(canonical)
        items.append(
            {
                "alert": index[id(w.alert)],
                "rule": rule.name,
                "target": w.target,
                **decision_inputs(rule, w.render_error),
                "plan_hash": hashlib.sha256(canonical.encode()).hexdigest(),
                "dry_run": w.plan.dry_run,
                "on_interrupt": rule.on_interrupt,
                "rule_source": w.rule.source,
            }
        )
    head = _dumps(
        {
            "receiver": n.receiver,
            "status": n.status,
            "group_key": n.group_key,
            "truncated_alerts": n.truncated_for_journal,
            "approval_timeout": settings.approval_timeout,
            "alerts": [_alert_row(a) for a in n.alerts],
            "work": items,
        }
    )
    # `head` is a JSON object: the payload and the plans go in before its closing brace.
    # Canonical plan texts are JSON already: joined, they are the JSON array.
    item = f'{head[:-1]},"payload":{_dumps(raw)},"plans":[{",".join(plans)}]}}'
    # Every rule+target this notification decides for; the journal takes them in its order.
    locks = list({(w.rule.name, w.target) for w in work})
    return Notice(item=item, locks=locks, alerts=len(n.alerts))


def _result(prepared: Prepared, recorded: dict[str, Any]) -> IngestResult:
    result = IngestResult(
        notification_id=recorded["notification_id"],
        alerts=len(prepared.statuses),
        cancelled=recorded["cancelled"],
    )
    for (rule, fingerprint), (action_id, state, reason) in zip(
        prepared.work, recorded["actions"], strict=True
    ):
        if action_id is None:  # the same firing was recorded before: nothing new, by design
            result.duplicates.append({"rule": rule, "fingerprint": fingerprint})
            continue
        result.actions.append(
            ActionRecord(
                action_id,
                rule,
                fingerprint,
                state,
                reason,
                circuit_open=reason.startswith("circuit open"),
            )
        )
    return result


def _dumps(value: Any) -> str:
    """JSON text, by orjson: the request path encodes every notification, so it counts."""
    return orjson.dumps(value).decode()


def _alert_row(alert: Alert) -> dict[str, Any]:
    ends_at = alert.ends_at_or_none
    return {
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "starts_at": alert.starts_at.isoformat(),
        "ends_at": ends_at.isoformat() if ends_at is not None else None,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "generator_url": alert.generator_url,
    }


# --- HTTP -----------------------------------------------------------------------------------


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (declared or actually sent)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(body: bytes, rules: RuleSet, settings: HealerSettings) -> Prepared:
    """Parse and prepare in a frame of their own: what they build is not kept (Prepared)."""
    notification, raw = parse_notification(body)
    return prepare(notification, raw, rules, settings)


async def post_alerts(request: web.Request) -> web.Response:
    """Alertmanager's webhook receiver (version 4)."""
    app = request.app
    if app[appkeys.DRAINING].is_set():
        return _error(503, "the healer is shutting down; send again")
    settings: HealerSettings = app[appkeys.CONFIG].healer
    body = await read_body(request, settings.max_body)
    if body is None:
        return _error(413, f"body larger than healer.max_body ({settings.max_body} bytes)")
    try:
        prepared = _prepare(body, app[appkeys.RULES], settings)
    except BadPayload as exc:
        return _error(400, exc.message, path=exc.path)
    except UnsupportedVersion as exc:
        return _error(422, str(exc))
    del body  # nor is the body kept while the request waits for the journal
    try:
        result = await record(app[appkeys.INGEST_WRITER], prepared, app[appkeys.METRICS])
    except JournalUnavailable as exc:
        log.warning("alert not recorded: %s", exc)
        return _error(503, "journal unavailable: nothing was recorded; send again")
    return web.json_response(result.as_json(), dumps=_dumps)
