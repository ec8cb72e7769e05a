"""A storm as users get one: a real Alertmanager delivering thousands of alerts to the healer.

The alerts go to Alertmanager's own API (POST /api/v2/alerts, as Prometheus sends them), with
`group_by: ['...']` so every alert is its own aggregation group and its own notification, the
most requests a storm can make. `group_wait` is long enough for every group to exist before
the first flushes, so Alertmanager then sends them all at once, each group on its goroutine
and its connection. The healer's rate is read from its journal: alerts recorded from the first
commit to the last. Alertmanager's own metrics say whether any notification failed (and was
retried) and how long it waited for the healer's answer.

Alertmanager shares the 2 cores: its CPU time is reported next to the healer's and the
journal's.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from typing import Any

import psutil
import yaml

from bench import alerts
from bench.env import BenchEnv
from bench.harness import (
    RssSampler,
    cpu_seconds,
    http_get,
    log,
    ratio,
    serve_on_free_port,
    wait_until,
)
from bench.healer_proc import Healer

ALERTMANAGER = "prometheus-alertmanager"  # Debian's name for the binary
GROUP_WAIT_S = 10
POST_CHUNK = 1000


def available() -> bool:
    return shutil.which(ALERTMANAGER) is not None


def _config(healer: Healer, token_file: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "taskmedic-healer",
            "group_by": ["..."],
            "group_wait": f"{GROUP_WAIT_S}s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [
            {
                "name": "taskmedic-healer",
                "webhook_configs": [
                    {
                        "url": f"{healer.url}/alerts",
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": token_file}
                        },
                    }
                ],
            }
        ],
    }


def _webhook_metrics(am_url: str) -> dict[str, float]:
    """Alertmanager's webhook counters (integration="webhook"), by metric name."""
    out: dict[str, float] = {}
    for line in http_get(f"{am_url}/metrics").splitlines():
        if line.startswith("alertmanager_notification") and 'integration="webhook"' in line:
            name = line.split("{", 1)[0]
            if not name.endswith("_bucket"):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _postgres_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["name"])
        if (p.info["name"] or "").startswith("postgres")
    ]


def _post_alerts(am_url: str, count: int, run: str) -> float:
    """POST `count` distinct firing alerts to Alertmanager's API; the seconds it took."""
    posted = time.monotonic()
    batch: list[dict[str, Any]] = []
    for i in range(count):
        a = alerts.payload(i, run=run)["alerts"][0]
        batch.append({k: a[k] for k in ("labels", "annotations", "startsAt", "generatorURL")})
        if len(batch) == POST_CHUNK or i == count - 1:
            req = urllib.request.Request(  # noqa: S310 - 127.0.0.1 only
                f"{am_url}/api/v2/alerts",
                data=json.dumps(batch).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                resp.read()
            batch = []
    return time.monotonic() - posted


def run(env: BenchEnv, healer: Healer, count: int, storms: int = 2) -> dict[str, Any]:
    """`storms` storms of `count` alerts, one after the other, through one Alertmanager."""
    token = env.path("alertmanager-storm.token")
    token.write_text(healer.token)
    token.chmod(0o600)
    cfg = env.path("alertmanager-storm.yml")
    cfg.write_text(yaml.safe_dump(_config(healer, str(token)), sort_keys=False))

    def start(port: int) -> Any:
        return env.proc(
            [
                ALERTMANAGER,
                f"--config.file={cfg}",
                f"--storage.path={env.path('alertmanager-storm-data')}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no HA gossip port
            ],
            "alertmanager-storm",
        )

    am, port = serve_on_free_port(start, "/-/ready", "Alertmanager")
    am_url = f"http://127.0.0.1:{port}"
    pg = _postgres_pids()
    out: list[dict[str, Any]] = []
    with RssSampler(healer.proc.pid, interval=0.1) as rss:
        rss.phase("before")
        time.sleep(1)
        for n in range(1, storms + 1):
            rss.phase(f"storm {n}")
            out.append(_storm(healer, am_url, am.pid, pg, count, n))
            rss.phase(f"after {n}")
            time.sleep(3)
    am.stop()
    phases = rss.by_phase()
    for n, storm in enumerate(out, 1):
        storm["rss_max_mib"] = phases[f"storm {n}"]["max_mib"]
        storm["rss_after_mib"] = phases[f"after {n}"]["last_mib"]
    return {"storms": out, "rss_before_mib": phases["before"]["last_mib"]}


def _storm(
    healer: Healer, am_url: str, am_pid: int, pg: list[int], count: int, n: int
) -> dict[str, Any]:
    before = healer.one("SELECT count(*) FROM alerts")
    m0 = _webhook_metrics(am_url)
    b0 = healer.batches()
    cpu0 = (cpu_seconds(healer.proc.pid), cpu_seconds(am_pid), cpu_seconds(*pg))
    post_s = _post_alerts(am_url, count, f"am{n}-")
    log(f"alertmanager storm {n}: {count:,} alerts posted to Alertmanager in {post_s:.1f} s")

    def all_recorded() -> bool:
        return bool(healer.one("SELECT count(*) FROM alerts") >= before + count)

    wait_until(all_recorded, GROUP_WAIT_S + 180, "the storm's alerts in the journal", 0.2)
    latency_n = "alertmanager_notification_latency_seconds_count"

    def answered() -> dict[str, float] | None:
        # Alertmanager counts a notification when it starts sending it; its latency once the
        # healer has answered.
        m = _webhook_metrics(am_url)
        return m if m.get(latency_n, 0) - m0.get(latency_n, 0) >= count else None

    m1 = wait_until(answered, 30, "Alertmanager to have every answer", 0.2)
    cpu1 = (cpu_seconds(healer.proc.pid), cpu_seconds(am_pid), cpu_seconds(*pg))
    b1 = healer.batches()
    metrics = {k: v - m0.get(k, 0.0) for k, v in m1.items()}
    recorded, span, peak = healer.query(
        "WITH a AS (SELECT received_at FROM alerts ORDER BY id OFFSET %s) "
        "SELECT count(*), extract(epoch FROM max(received_at) - min(received_at)), "
        "       (SELECT max(n) FROM (SELECT count(*) AS n FROM a "
        "                            GROUP BY date_trunc('second', received_at)) AS s) "
        "FROM a",
        (before,),
    )[0]
    actions = healer.one(
        "SELECT count(*) FROM actions a JOIN alerts al ON al.id = a.alert_id "
        "WHERE al.labels ->> 'shard' LIKE %s",
        (f"am{n}-%",),
    )
    span = float(span or 0)
    log(f"alertmanager storm {n}: {ratio(int(recorded), span):,.0f} alerts/s")
    return {
        "alerts": count,
        "recorded": int(recorded),
        "actions": int(actions),
        "span_s": span,
        # N commits span N-1 intervals; over thousands of alerts the difference is noise.
        "rate": ratio(int(recorded), span),
        "peak_second": int(peak or 0),
        "per_transaction": ratio(b1[1] - b0[1], b1[0] - b0[0]),
        "notifications": metrics.get("alertmanager_notifications_total", 0),
        "failed_notifications": metrics.get("alertmanager_notifications_failed_total", 0),
        "requests": metrics.get("alertmanager_notification_requests_total", 0),
        "failed_requests": metrics.get("alertmanager_notification_requests_failed_total", 0),
        "mean_latency_s": ratio(
            metrics.get("alertmanager_notification_latency_seconds_sum", 0),
            metrics.get(latency_n, 0),
        ),
        "post_s": post_s,
        "cpu_s": {
            "healer": cpu1[0] - cpu0[0],
            "alertmanager": cpu1[1] - cpu0[1],
            "postgres": cpu1[2] - cpu0[2],
        },
    }
