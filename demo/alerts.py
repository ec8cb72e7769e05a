"""Without Prometheus and Alertmanager: the demo fires the shipped alerts at the healer itself.

Every few seconds it reads the exporter's /metrics, applies the few alerting rules the demo's
faults trip (the expressions of rules/prometheus/taskmedic.rules.yml, with `for:` of a few
seconds), and posts what Alertmanager would: a version 4 webhook payload with the bearer token,
`startsAt` the moment the condition began (so each new fault is a new alert, never a
duplicate), and a `resolved` notification once the condition clears.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["AlertFirer", "active_alerts", "payload"]

FOR_SECONDS = 5.0
ZERO_TIME = "0001-01-01T00:00:00Z"
SUMMARIES = {
    "TaskmedicStaleRows": "{check}: rows older than their max_age",
    "TaskmedicOrphanTasks": "{check}: rows claim a Celery task no worker runs",
    "TaskmedicOrphanRows": "{check}: orphan rows",
    "TaskmedicCeleryWorkerDown": "Celery worker {worker} ({cluster}) stopped sending heartbeats",
}
SEVERITY = {"TaskmedicCeleryWorkerDown": "critical"}

Labels = frozenset[tuple[str, str]]


def active_alerts(samples: Iterable[tuple[str, dict[str, str], float]]) -> set[Labels]:
    """The alerts the shipped rules would have active for these samples (before `for:`)."""
    found: set[Labels] = set()
    for name, labels, value in samples:
        alertname = None
        keep: tuple[str, ...] = ("check",)
        if name == "taskmedic_stale_rows" and value > 0:
            alertname = "TaskmedicStaleRows"
        elif name == "taskmedic_orphan_tasks" and value > 0:  # summed without reason: any > 0
            alertname = "TaskmedicOrphanTasks"
        elif name == "taskmedic_orphan_rows" and value > 0:
            alertname = "TaskmedicOrphanRows"
        elif name == "taskmedic_celery_worker_crashed" and value == 1:
            alertname, keep = "TaskmedicCeleryWorkerDown", ("cluster", "worker")
        if alertname is None:
            continue
        picked = {k: labels[k] for k in keep if k in labels}
        picked |= {"alertname": alertname, "severity": SEVERITY.get(alertname, "warning")}
        found.add(frozenset(picked.items()))
    return found


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def payload(labels: dict[str, str], *, starts_at: float, ends_at: float | None) -> dict[str, Any]:
    """One alert in the body Alertmanager's webhook sends (version 4)."""
    status = "firing" if ends_at is None else "resolved"
    group = {"alertname": labels["alertname"]}
    fingerprint = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
    return {
        "version": "4",
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "taskmedic-healer",
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://taskmedic-demo",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {
                    "summary": SUMMARIES.get(labels["alertname"], "").format_map(
                        {"check": "", "worker": "", "cluster": "", **labels}
                    )
                },
                "startsAt": _iso(starts_at),
                "endsAt": ZERO_TIME if ends_at is None else _iso(ends_at),
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
    }


@dataclass
class Pending:
    since_monotonic: float
    since_wall: float
    sent: bool = False


class AlertFirer:
    """Scrape, evaluate, post; call `step()` every couple of seconds from the demo's loop."""

    def __init__(self, metrics_url: str, alerts_url: str, token_file: Path) -> None:
        self.metrics_url = metrics_url
        self.alerts_url = alerts_url
        self.token_file = token_file
        self.pending: dict[Labels, Pending] = {}

    def scrape(self) -> list[tuple[str, dict[str, str], float]] | None:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=3) as resp:  # noqa: S310
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        return [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def post(self, body: dict[str, Any]) -> str:
        token = self.token_file.read_text(encoding="utf-8").strip()
        req = urllib.request.Request(  # noqa: S310 - the demo's own healer
            self.alerts_url,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                return f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"not delivered ({exc})"

    def step(self) -> list[str]:
        """One evaluation; returns a line for each notification posted."""
        samples = self.scrape()
        if samples is None:
            return []
        now_m, now_w = time.monotonic(), time.time()
        active = active_alerts(samples)
        notes = []
        for labels in active:
            p = self.pending.setdefault(labels, Pending(now_m, now_w))
            if not p.sent and now_m - p.since_monotonic >= FOR_SECONDS:
                p.sent = True
                result = self.post(payload(dict(labels), starts_at=p.since_wall, ends_at=None))
                notes.append(f"fired {_show(labels)} at the healer ({result})")
        for labels in set(self.pending) - active:
            p = self.pending.pop(labels)
            if p.sent:
                body = payload(dict(labels), starts_at=p.since_wall, ends_at=now_w)
                notes.append(f"resolved {_show(labels)} ({self.post(body)})")
        return notes


def _show(labels: Labels) -> str:
    d = dict(labels)
    name = d.pop("alertname")
    d.pop("severity", None)
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(d.items())) + "}"
