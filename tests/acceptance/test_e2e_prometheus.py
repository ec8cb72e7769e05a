"""The whole loop with the real Prometheus and Alertmanager, configured from deploy/.

exporter -> Prometheus (the shipped alerting rules) -> Alertmanager (the shipped receiver: a
webhook with a bearer token from a credentials file, send_resolved) -> healer -> a repair step
refreshes the stale rows -> the exporter sees none -> the alert resolves. This proves the
healer takes the webhook exactly as Alertmanager sends it (version 4, bearer auth) and that
the files users copy from deploy/ and rules/ work together.

Only the timings are changed for the test (scrape and evaluation every second, group_wait 1s,
`for:` 2s) and the addresses (random free ports on 127.0.0.1).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.services import ROOT, PostgresServer, free_port, need_or_skip, wait_for

pytestmark = pytest.mark.prometheus

PROMETHEUS = Path("/usr/bin/prometheus")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
TOKEN = "e2e-token-3f9c1d7a"
RULE = "e2e-refresh-tree-status"


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Procs:
    """Processes of one test, each in its own process group, all stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        p = Proc(name, proc, log)
        self.started.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.started)

    def stop(self) -> None:
        for p in reversed(self.started):
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGTERM)
        for p in self.started:
            try:
                p.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    yield ps
    ps.stop()


@pytest.fixture
def journal_dsn(pg_server: PostgresServer) -> Iterator[str]:
    name, dsn = pg_server.create_database()
    yield dsn
    pg_server.drop_database(name)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)  # noqa: S310 - 127.0.0.1 URLs built by this test
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def get_json(url: str, token: str | None = None) -> Any:
    status, body = get(url, token)
    return json.loads(body) if status == 200 else None


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = get(url)
    if status != 200:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def metric_sum(url: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(url).items() if n == name and want <= ls)


def prometheus_alerts(url: str) -> list[dict[str, Any]]:
    data = get_json(f"{url}/api/v1/alerts")
    return list(data["data"]["alerts"]) if data else []


def firing(url: str, alertname: str) -> bool:
    return any(
        a["labels"].get("alertname") == alertname and a["state"] == "firing"
        for a in prometheus_alerts(url)
    )


# --- configuration, derived from what we ship -----------------------------------------------


def rules_for_test(dst: Path) -> None:
    """The shipped alerting rules with every `for:` shortened to 2 s."""
    doc = yaml.safe_load((ROOT / "rules" / "prometheus" / "taskmedic.rules.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))


def prometheus_config(dst: Path, rules: Path, exporter: str, healer: str, am: str) -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    doc["global"].update(scrape_interval="1s", evaluation_interval="1s")
    doc["rule_files"] = [str(rules)]
    doc["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [am]}]
    targets = {"taskmedic-exporter": exporter, "taskmedic-healer": healer}
    for job in doc["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        job.update(scrape_interval="1s", scrape_timeout="1s")
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))


def alertmanager_config(dst: Path, healer: str, token_file: Path) -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())

    def fast(route: dict[str, Any]) -> None:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
        for child in route.get("routes", []):
            fast(child)

    fast(doc["route"])
    (receiver,) = [r for r in doc["receivers"] if r["name"] == "taskmedic-healer"]
    (hook,) = receiver["webhook_configs"]
    hook["url"] = f"http://{healer}/alerts"
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))


def taskmedic_config(
    dst: Path, app_dsn: str, journal_dsn: str, exporter: str, healer: str, token_file: Path
) -> None:
    (dst.parent / "rules.yaml").write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": RULE,
                        "match": {"alertname": "TaskmedicStaleRows", "check": "tree_status_cache"},
                        "steps": [
                            {
                                "name": "refresh the rows the check confirms",
                                "repair": {
                                    "check": "tree_status_cache",
                                    "sql": "UPDATE agents_status_cache SET updated_at = now()"
                                    " WHERE agent_id = ANY(%(keys)s) RETURNING agent_id",
                                },
                            }
                        ],
                    }
                ]
            },
            sort_keys=False,
        )
    )
    config = {
        "databases": {"app": {"dsn": app_dsn}},
        "exporter": {"listen": exporter, "interval": "1s", "timeout": "1s"},
        "checks": [
            {
                "name": "tree_status_cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": "SELECT agent_id, updated_at FROM agents_status_cache",
            }
        ],
        "healer": {
            "listen": healer,
            "journal": {"dsn": journal_dsn},
            # The token reads too: the test checks what happened through the API.
            "auth": {
                "bearer_token_file": str(token_file),
                "alertmanager_roles": ["post_alerts", "read"],
            },
            "rules": ["rules.yaml"],
            "lease": "10s",
        },
    }
    dst.write_text(yaml.safe_dump(config, sort_keys=False))


def stale_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM agents_status_cache WHERE updated_at < now() - interval '10 min'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.timeout(240)
def test_stale_rows_alert_goes_through_prometheus_and_alertmanager_to_a_repair_that_resolves_it(
    tmp_path: Path, pg_dsn: str, journal_dsn: str, procs: Procs
) -> None:
    """Three stale rows -> TaskmedicStaleRows fires -> Alertmanager calls the healer with its
    bearer token -> one action repairs exactly those rows and succeeds -> the alert resolves
    and Alertmanager's resolved notification reaches the healer too."""
    need_or_skip(PROMETHEUS.exists(), str(PROMETHEUS))
    need_or_skip(ALERTMANAGER.exists(), str(ALERTMANAGER))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "CREATE TABLE agents_status_cache (agent_id text PRIMARY KEY, updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO agents_status_cache VALUES"
            " ('agent-1', now() - interval '1 hour'), ('agent-2', now() - interval '2 hours'),"
            " ('agent-3', now() - interval '3 hours'), ('agent-4', now())"
        )
    assert stale_rows(pg_dsn) == 3

    exporter, healer = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    prom, am = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    token_file = tmp_path / "healer-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cfg = tmp_path / "taskmedic.yaml"
    taskmedic_config(cfg, pg_dsn, journal_dsn, exporter, healer, token_file)
    rules_for_test(tmp_path / "taskmedic.rules.yml")
    prometheus_config(
        tmp_path / "prometheus.yml", tmp_path / "taskmedic.rules.yml", exporter, healer, am
    )
    alertmanager_config(tmp_path / "alertmanager.yml", healer, token_file)

    taskmedic = [sys.executable, "-m", "healer.cli"]
    procs.start("exporter", [*taskmedic, "exporter", "--config", str(cfg)])
    procs.start("healer", [*taskmedic, "healer", "--config", str(cfg)])
    procs.start(
        "alertmanager",
        [
            str(ALERTMANAGER),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address={am}",
            "--cluster.listen-address=",  # no HA gossip port
        ],
    )
    procs.start(
        "prometheus",
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address={prom}",
        ],
    )

    def up(url: str) -> bool:
        for p in procs.started:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited {p.proc.returncode}\n{procs.logs()}")
        return get(url)[0] == 200

    for url in (
        f"http://{exporter}/metrics",
        f"http://{healer}/readyz",
        f"http://{am}/-/ready",
        f"http://{prom}/-/ready",
    ):
        wait_for(functools.partial(up, url), timeout=60, interval=0.2, what=url)

    try:
        # Prometheus scrapes the exporter and the healer, and fires the shipped alert.
        wait_for(
            lambda: firing(f"http://{prom}", "TaskmedicStaleRows"),
            timeout=60,
            interval=0.5,
            what="TaskmedicStaleRows firing in Prometheus",
        )
        (alert,) = [
            a
            for a in prometheus_alerts(f"http://{prom}")
            if a["labels"]["alertname"] == "TaskmedicStaleRows"
        ]
        assert alert["labels"]["check"] == "tree_status_cache"
        assert float(alert["value"]) == 3

        # Alertmanager delivers it; the healer records one action that repairs the rows.
        def succeeded() -> list[dict[str, Any]]:
            page = get_json(f"http://{healer}/api/actions?rule={RULE}", TOKEN)
            items = page["items"] if page else []
            assert all(i["state"] not in ("failed", "interrupted") for i in items), (
                f"{items}\n{procs.logs()}"
            )
            return [i for i in items if i["state"] == "succeeded"]

        (action,) = wait_for(succeeded, timeout=60, interval=0.5, what="a succeeded action")
        assert stale_rows(pg_dsn) == 0
        assert action["alert"]["labels"]["alertname"] == "TaskmedicStaleRows"
        assert action["alert"]["labels"]["check"] == "tree_status_cache"
        # The repair changed exactly the rows the check confirmed, and the journal says which.
        detail = get_json(f"http://{healer}/api/actions/{action['id']}", TOKEN)
        (step,) = detail["steps"]
        assert step["state"] == "succeeded"
        assert sorted(step["result"]["changed_keys"]) == ["agent-1", "agent-2", "agent-3"]

        # The exporter sees no stale rows any more, and the alert resolves in Prometheus.
        wait_for(
            lambda: not firing(f"http://{prom}", "TaskmedicStaleRows"),
            timeout=60,
            interval=0.5,
            what="TaskmedicStaleRows resolved in Prometheus",
        )
        # Alertmanager sends the resolved notification (send_resolved: true) with the token.
        healer_metrics = f"http://{healer}/metrics"
        wait_for(
            lambda: (
                metric_sum(healer_metrics, "taskmedic_alerts_received_total", status="resolved")
                >= 1
            ),
            timeout=60,
            interval=0.5,
            what="the resolved notification at the healer",
        )
        assert metric_sum(healer_metrics, "taskmedic_alerts_received_total", status="firing") >= 1
        am_metrics = f"http://{am}/metrics"
        assert (
            metric_sum(am_metrics, "alertmanager_notifications_total", integration="webhook") >= 2
        )
        assert (
            metric_sum(am_metrics, "alertmanager_notifications_failed_total", integration="webhook")
            == 0
        ), procs.logs()
        # However often Alertmanager sent it, one firing alert gave one action.
        page = get_json(f"http://{healer}/api/actions?rule={RULE}", TOKEN)
        assert [i["id"] for i in page["items"]] == [action["id"]]
        # Without the token the healer's API answers 401.
        assert get(f"http://{healer}/api/actions")[0] == 401
    except AssertionError:
        print(procs.logs())
        raise
