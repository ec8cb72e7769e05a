"""POST /alerts: one Alertmanager notification becomes ONE journal transaction, then 200.

The notification, its alerts and every action they start (with its steps, events and
notifications to the executors) commit together. Actions are keyed by (rule, fingerprint,
startsAt, trigger) with a unique constraint, so an Alertmanager retry or the copy sent by the
other replica of an HA pair never starts a second action. Cooldown, the circuit breaker and
approval are decided inside that transaction under an advisory lock per rule and target, so
concurrent requests and several healer processes decide one after another.

A 5xx means only "not recorded, send again": the journal was unreachable (503) or the healer is
shutting down (503). A remediation that fails later is recorded as failed; the webhook already
answered 200 and Alertmanager does not resend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, LiteralString

from aiohttp import web
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from healer import appkeys
from healer.config import HealerSettings, Rule
from healer.errors import JournalUnavailable
from healer.journal.pool import RETRYABLE, journal_errors
from healer.journal.queries import q
from healer.metrics import HealerMetrics
from healer.plan import Plan
from healer.render import RenderError, empty_plan, render
from healer.rules import CompiledRule, RuleSet
from healer.webhook import Alert, BadPayload, Notification, UnsupportedVersion, parse_notification

__all__ = ["IngestResult", "decide", "ingest", "plan_for", "post_alerts", "read_body"]

log = logging.getLogger(__name__)
ACTOR = "ingest"


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def decide(
    rule: Rule, *, render_error: str | None, in_cooldown: int, in_limit: int
) -> tuple[str, str]:
    """The new action's state and reason, from what this rule and target did recently.

    Pure, so `rules replay` decides exactly as ingest does.
    """
    if render_error is not None:
        return "failed", render_error
    if rule.cooldown > 0 and in_cooldown > 0:
        return "skipped", (
            f"cooldown: an action of this rule for the same target was created within "
            f"the last {_duration(rule.cooldown)}"
        )
    if rule.limit is not None and in_limit >= rule.limit.count:
        return "skipped", (
            f"circuit open: {in_limit} actions of this rule for the same target within "
            f"{_duration(rule.limit.per)} (limit {rule.limit.count}); a human should look"
        )
    if rule.approval:
        return "awaiting_approval", "waiting for approval"
    return "pending", ""


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


async def ingest(
    pool: AsyncConnectionPool[Any],
    notification: Notification,
    raw: dict[str, Any],
    rules: RuleSet,
    settings: HealerSettings,
    metrics: HealerMetrics | None = None,
) -> IngestResult:
    """Record the notification and start its actions in one transaction (JournalUnavailable)."""
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
    result: IngestResult | None = None
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        stop=stop_after_attempt(5),
        wait=wait_random(0.01, 0.2),
        reraise=True,
    ):
        with attempt, journal_errors():
            async with pool.connection() as conn, conn.transaction():
                result = await _record(conn, notification, raw, work, settings)
    assert result is not None
    if metrics is not None:
        _count(metrics, notification, result)
    return result


def _count(metrics: HealerMetrics, notification: Notification, result: IngestResult) -> None:
    for alert in notification.alerts:
        metrics.alerts_received.labels(alert.status).inc()
    if notification.truncated_alerts:
        metrics.alerts_truncated.inc(notification.truncated_alerts)
    for a in result.actions:
        if a.state in ("skipped", "failed"):
            metrics.actions_total.labels(a.rule, a.state).inc()
        if a.circuit_open:
            metrics.rule_circuit_open.labels(a.rule).set(1)


async def _exec(conn: AsyncConnection[Any], name: str, params: dict[str, Any]) -> Any:
    query: LiteralString = q(name)
    cur = await conn.execute(query, params)
    return cur


async def _record(
    conn: AsyncConnection[Any],
    n: Notification,
    raw: dict[str, Any],
    work: list[_Work],
    settings: HealerSettings,
) -> IngestResult:
    cur = await _exec(
        conn,
        "insert_notification",
        {
            "receiver": n.receiver,
            "status": n.status,
            "group_key": n.group_key,
            "truncated_alerts": n.truncated_for_journal,
            "payload": Jsonb(raw),
        },
    )
    result = IngestResult(notification_id=(await cur.fetchone())[0], alerts=len(n.alerts))
    alert_ids: dict[int, int] = {}
    for alert in n.alerts:
        cur = await _exec(
            conn,
            "insert_alert",
            {
                "notification_id": result.notification_id,
                "status": alert.status,
                "fingerprint": alert.fingerprint,
                "starts_at": alert.starts_at,
                "ends_at": alert.ends_at_or_none,
                "labels": Jsonb(alert.labels),
                "annotations": Jsonb(alert.annotations),
                "generator_url": alert.generator_url,
            },
        )
        alert_ids[id(alert)] = (await cur.fetchone())[0]
    # Lock every rule+target this notification decides for, in one global order: two
    # notifications touching the same targets can never wait on each other in a cycle.
    for rule_name, target in sorted({(w.rule.name, w.target) for w in work}):
        await _exec(conn, "lock_rule_target", {"rule": rule_name, "target": target})
    for alert in n.alerts:
        if alert.status == "resolved":
            await _cancel_unstarted(conn, alert, result)
    for w in work:
        await _start_action(conn, w, alert_ids[id(w.alert)], settings, result)
    return result


async def _cancel_unstarted(conn: AsyncConnection[Any], alert: Alert, result: IngestResult) -> None:
    reason = "the alert resolved before the action started"
    cur = await _exec(
        conn,
        "cancel_unstarted_for_alert",
        {"fingerprint": alert.fingerprint, "starts_at": alert.starts_at, "reason": reason},
    )
    for action_id, _rule, from_state in await cur.fetchall():
        await _exec(conn, "cancel_pending_steps", {"action_id": action_id})
        await _event(conn, action_id, "cancelled", from_state, "cancelled", reason, {})
        await _exec(conn, "notify_state", {"action_id": action_id})
        result.cancelled.append(action_id)


async def _event(
    conn: AsyncConnection[Any],
    action_id: int,
    kind: str,
    from_state: str | None,
    to_state: str,
    message: str,
    data: dict[str, Any],
) -> None:
    await _exec(
        conn,
        "insert_event",
        {
            "action_id": action_id,
            "actor": ACTOR,
            "kind": kind,
            "from_state": from_state,
            "to_state": to_state,
            "message": message,
            "data": Jsonb(data),
        },
    )


async def _start_action(
    conn: AsyncConnection[Any],
    w: _Work,
    alert_id: int,
    settings: HealerSettings,
    result: IngestResult,
) -> None:
    rule = w.rule.rule
    key = {
        "rule": rule.name,
        "fingerprint": w.alert.fingerprint,
        "starts_at": w.alert.starts_at,
        "trigger": w.alert.status,
    }
    cur = await _exec(
        conn,
        "recent_actions",
        {
            **key,
            "target": w.target,
            "cooldown": rule.cooldown,
            "per": rule.limit.per if rule.limit else 0.0,
        },
    )
    in_cooldown, in_limit = await cur.fetchone()
    state, reason = decide(
        rule, render_error=w.render_error, in_cooldown=in_cooldown, in_limit=in_limit
    )
    cur = await _exec(
        conn,
        "insert_action",
        {
            **key,
            "alert_id": alert_id,
            "labels": Jsonb(w.alert.labels),
            "target": w.target,
            "state": state,
            "reason": reason,
            "dry_run": w.plan.dry_run,
            "plan": Jsonb(w.plan.model_dump(mode="json")),
            "plan_hash": w.plan.hash(),
            "on_interrupt": rule.on_interrupt,
            "approval_timeout": settings.approval_timeout,
        },
    )
    row = await cur.fetchone()
    if row is None:  # the same firing was recorded before: nothing new, by design
        result.duplicates.append({"rule": rule.name, "fingerprint": w.alert.fingerprint})
        return
    action_id = row[0]
    step_state = "pending" if state in ("pending", "awaiting_approval") else state
    if step_state == "failed":
        step_state = "skipped"
    for idx, step in enumerate(w.plan.steps):
        await _exec(
            conn,
            "insert_step",
            {
                "action_id": action_id,
                "idx": idx,
                "name": step.name,
                "kind": step.kind,
                "state": step_state,
            },
        )
    await _event(
        conn,
        action_id,
        "created",
        None,
        state,
        reason,
        {
            "alert_id": alert_id,
            "plan_hash": w.plan.hash(),
            "dry_run": w.plan.dry_run,
            "rule_source": w.rule.source,
        },
    )
    if state == "pending":
        await _exec(conn, "notify_pending", {"action_id": action_id})
    await _exec(conn, "notify_state", {"action_id": action_id})
    result.actions.append(
        ActionRecord(
            action_id,
            rule.name,
            w.alert.fingerprint,
            state,
            reason,
            circuit_open=reason.startswith("circuit open"),
        )
    )


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
        notification, raw = parse_notification(body)
    except BadPayload as exc:
        return _error(400, exc.message, path=exc.path)
    except UnsupportedVersion as exc:
        return _error(422, str(exc))
    try:
        result = await ingest(
            app[appkeys.JOURNAL_POOL],
            notification,
            raw,
            app[appkeys.RULES],
            settings,
            app[appkeys.METRICS],
        )
    except JournalUnavailable as exc:
        log.warning("alert not recorded: %s", exc)
        return _error(503, "journal unavailable: nothing was recorded; send again")
    return web.json_response(result.as_json())
