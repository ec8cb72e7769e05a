"""Alertmanager webhook payloads (version "4") as Alertmanager 0.25 sends them: one firing
alert per notification, each with its own fingerprint and label set.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any


def payload(i: int, *, alertname: str = "TaskmedicOrphanTasks", run: str = "") -> dict[str, Any]:
    labels = {
        "alertname": alertname,
        "check": "timelines",
        "instance": f"app-{i % 50:02d}.internal:9808",
        "job": "taskmedic",
        "severity": "warning",
        "shard": f"{run}{i}",
    }
    fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    starts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    group_labels = {"alertname": alertname, "check": "timelines", "shard": labels["shard"]}
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": {
            "summary": f"{i} timelines claim to run with no Celery task",
            "description": "Rows in `processing` whose task id no live worker knows.",
            "runbook_url": "https://runbooks.example/taskmedic/orphan-tasks",
        },
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.internal:9090/graph?g0.expr=taskmedic_orphan_tasks",
        "fingerprint": fingerprint,
    }
    return {
        "receiver": "taskmedic",
        "status": "firing",
        "alerts": [alert],
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager.internal:9093",
        "version": "4",
        "groupKey": "{}:"
        + f'{{alertname="{alertname}", check="timelines", shard="{labels["shard"]}"}}',
        "truncatedAlerts": 0,
    }


def body(i: int, **kw: Any) -> bytes:
    return json.dumps(payload(i, **kw)).encode()
