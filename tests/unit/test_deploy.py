"""What users copy from rules/ and deploy/ works as shipped.

Prometheus, Alertmanager and systemd read these files with their own tools (promtool, amtool,
systemd-analyze), run here for real; the healer rule packs and the example config go through
taskmedic's own `rules check` and `config check` commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import Config
from tests.services import ROOT, need_or_skip, reachable

PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"
RULES = ROOT / "rules" / "prometheus" / "taskmedic.rules.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "taskmedic-dashboard.json"
EXAMPLE = ROOT / "deploy" / "taskmedic.example.yaml"
PACKS = sorted((ROOT / "rules" / "healer").glob("*.yaml"))
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"

# Contract 8: the alert names the healer's rule packs match on.
CONTRACT_ALERTS = {
    "TaskmedicStaleRows",
    "TaskmedicOrphanTasks",
    "TaskmedicOrphanRows",
    "TaskmedicCheckDown",
    "TaskmedicCeleryWorkerDown",
    "TaskmedicCeleryBrokerDown",
    "TaskmedicCeleryTaskOverdue",
}

# The exporter's metric names as issue 3 defines them.
EXPORTER_METRICS = {
    "taskmedic_stale_rows",
    "taskmedic_stale_oldest_age_seconds",
    "taskmedic_orphan_tasks",
    "taskmedic_orphan_oldest_age_seconds",
    "taskmedic_orphan_rows",
    "taskmedic_check_up",
    "taskmedic_check_duration_seconds",
    "taskmedic_check_last_success_timestamp_seconds",
    "taskmedic_build_info",
    "taskmedic_celery_broker_up",
    "taskmedic_celery_workers",
    "taskmedic_celery_worker_up",
    "taskmedic_celery_worker_last_heartbeat_timestamp_seconds",
    "taskmedic_celery_worker_crashed",
    "taskmedic_celery_task_events_total",
    "taskmedic_celery_task_last_received_timestamp_seconds",
    "taskmedic_celery_task_last_started_timestamp_seconds",
    "taskmedic_celery_task_last_succeeded_timestamp_seconds",
    "taskmedic_celery_task_last_failed_timestamp_seconds",
    "taskmedic_celery_task_expected_interval_seconds",
    "taskmedic_celery_task_overdue",
}


def healer_metrics() -> set[str]:
    """Sample names the healer really exposes: its registry plus the journal's state gauge."""
    from healer.metrics import HealerMetrics

    names = {"taskmedic_actions"}  # read from the journal at scrape time (issue 4)
    for family in HealerMetrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr: str) -> set[str]:
    """The taskmedic metric names a PromQL expression reads."""
    return set(re.findall(r"\btaskmedic_[a-z0-9_]+\b", expr))


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, **kw)


def taskmedic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-c", "import sys; from healer.cli import main; sys.exit(main())", *args],
        env={**os.environ, **(env or {})},
    )


def has_command(*words: str) -> bool:
    """True when `taskmedic WORDS...` exists (its owner may not have added it yet)."""
    out = taskmedic(*words, "--help")
    return out.returncode == 0


# --- plain files ----------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    files = {
        p.resolve()
        for base in (ROOT / "rules", ROOT / "deploy", ROOT / "tests" / "promtool")
        for pattern in ("*.yml", "*.yaml")
        for p in base.rglob(pattern)
    }
    return sorted(files)


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_file_parses(path: Path) -> None:
    """A YAML syntax error in a file users copy is caught here, not in their Prometheus."""
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_alerting_rules_define_the_contract_alerts_on_real_metric_names() -> None:
    """Every alert the healer packs rely on exists, and no rule reads a metric nobody exports."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names >= CONTRACT_ALERTS
    known = EXPORTER_METRICS | healer_metrics()
    for rule in rules:
        assert metric_names(rule["expr"]) <= known, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_healer_rule_packs_match_only_alerts_that_exist_and_are_routed_to_the_healer() -> None:
    """A pack matching a misspelt alert, or one Alertmanager never sends, would never run."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    defined = {r["alert"] for g in groups for r in g["rules"]}
    am = yaml.safe_load(ALERTMANAGER_YML.read_text())
    healer_routes = [r for r in am["route"]["routes"] if r["receiver"] == "taskmedic-healer"]
    assert len(healer_routes) == 1
    (matcher,) = healer_routes[0]["matchers"]
    routed = re.fullmatch(r'alertname =~ "(.*)"', matcher)
    assert routed is not None
    assert PACKS, "no healer rule packs under rules/healer"
    for pack in PACKS:
        for rule in yaml.safe_load(pack.read_text())["rules"]:
            alertname = rule["match"]["alertname"]
            assert alertname in defined, f"{pack.name}: {rule['name']}"
            assert re.fullmatch(routed.group(1), alertname), f"{alertname} not routed"


def test_alertmanager_calls_the_healer_webhook_with_a_bearer_token_file_and_resolved() -> None:
    """The receiver speaks to the healer's default address, with auth and resolved alerts."""
    from healer.config import HealerSettings

    am = yaml.safe_load(ALERTMANAGER_YML.read_text())
    (receiver,) = [r for r in am["receivers"] if r["name"] == "taskmedic-healer"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == f"http://{HealerSettings().listen}/alerts"
    assert hook["send_resolved"] is True
    assert hook["max_alerts"] > 0
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer"
    assert "credentials_file" in auth and "credentials" not in auth


def test_prometheus_scrapes_the_exporter_and_healer_default_addresses() -> None:
    from exporter.config import ExporterSettings
    from healer.config import HealerSettings

    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in prom["scrape_configs"]
    }
    assert targets["taskmedic-exporter"] == [ExporterSettings().listen]
    assert targets["taskmedic-healer"] == [HealerSettings().listen]


def test_grafana_dashboard_is_valid_and_queries_only_metrics_taskmedic_exports() -> None:
    """Grafana imports it, and no panel stays empty because of a misspelt metric name."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = EXPORTER_METRICS | healer_metrics()
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"query reads no taskmedic metric: {expr}"
        assert names <= known, f"unknown metric in {expr}: {names - known}"
        used |= names
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    # The dashboard covers the exporter's findings and liveness, and the healer's outcomes.
    for name in ("taskmedic_stale_rows", "taskmedic_orphan_tasks", "taskmedic_check_up"):
        assert name in used
    assert "taskmedic_celery_worker_up" in used and "taskmedic_actions_total" in used


# --- Prometheus and Alertmanager's own tools ------------------------------------------------


def need(binary: str) -> None:
    need_or_skip(Path(binary).exists(), binary)


def test_promtool_accepts_the_alerting_rules() -> None:
    need(PROMTOOL)
    out = run([PROMTOOL, "check", "rules", str(RULES)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_accepts_the_prometheus_config_and_the_rules_it_loads() -> None:
    need(PROMTOOL)
    out = run([PROMTOOL, "check", "config", str(PROMETHEUS_YML)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout + out.stderr


def test_promtool_unit_tests_of_the_alerting_rules_pass() -> None:
    """Stale rows, blind checks, dead workers and brokers fire their alerts after `for:`."""
    need(PROMTOOL)
    files = sorted(str(p) for p in (ROOT / "tests" / "promtool").glob("*.yml"))
    assert files
    out = run([PROMTOOL, "test", "rules", *files])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests above can fail: a rule with the wrong threshold makes them fail."""
    need(PROMTOOL)
    (tmp_path / "rules").mkdir()
    broken = RULES.read_text().replace("taskmedic_stale_rows > 0", "taskmedic_stale_rows > 5")
    assert broken != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    (tmp_path / "t").mkdir()
    for src in (ROOT / "tests" / "promtool").glob("*.yml"):
        text = src.read_text().replace("../../rules/prometheus/", "../rules/")
        (tmp_path / "t" / src.name).write_text(text)
    out = run([PROMTOOL, "test", "rules", *map(str, (tmp_path / "t").glob("*.yml"))])
    assert out.returncode != 0
    assert "TaskmedicStaleRows" in out.stdout + out.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    need(AMTOOL)
    out = run([AMTOOL, "check-config", str(ALERTMANAGER_YML)])
    assert out.returncode == 0, out.stdout + out.stderr


# --- taskmedic's own checks -----------------------------------------------------------------


def test_healer_rule_packs_pass_taskmedic_rules_check() -> None:
    if not has_command("rules", "check"):
        pytest.skip("`taskmedic rules check` is not available yet")
    out = taskmedic("rules", "check", *map(str, PACKS))
    assert out.returncode == 0, out.stdout + out.stderr


def secrets_env(tmp_path: Path) -> dict[str, str]:
    """The environment and secret files the example config refers to."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "timesketch-dsn").write_text("postgresql://ts_ro:dsn-secret-1@127.0.0.1/timesketch")
    for name in ("ibex-db-password", "journal-password", "healer-token", "healer-ops-password"):
        (creds / name).write_text(f"file-secret-{name}\n")
    return {
        "CREDENTIALS_DIRECTORY": str(creds),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "TRMM_DB_PASSWORD": "env-secret-trmm",
        "TIMESKETCH_REDIS_PASSWORD": "env-secret-redis",
    }


def test_example_config_passes_config_check_without_showing_a_secret(tmp_path: Path) -> None:
    """The annotated example is a working config; its check output masks every secret."""
    if not has_command("config", "check"):
        pytest.skip("`taskmedic config check` is not available yet")
    env = secrets_env(tmp_path)
    out = taskmedic("config", "check", "--config", str(EXAMPLE), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    shown = out.stdout + out.stderr
    assert "tree_status_cache" in shown
    for secret in ("env-secret-trmm", "env-secret-redis", "dsn-secret-1", "file-secret-"):
        assert secret not in shown


def test_example_config_loads_the_rule_packs_with_every_reference_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packs name databases, Celery apps and checks the example config defines."""
    from healer.config import load_healer_config
    from healer.rules import load_rules

    for k, v in secrets_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    config = load_healer_config(EXAMPLE)
    rules = load_rules(config)
    assert {r.name for r in rules} >= {
        "trmm-refresh-tree-status",
        "timesketch-fail-stuck-timelines",
        "ibex-cancel-records-without-action",
    }


# --- systemd and Docker ---------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_is_hardened(unit: Path) -> None:
    """No root, a read-only system, no privilege escalation: the service runs confined."""
    lines = {ln.strip() for ln in unit.read_text().splitlines()}
    for directive in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictSUIDSGID=yes",
        "SystemCallFilter=@system-service",
    ):
        assert directive in lines, f"{unit.name} lacks {directive}"
    assert "User=root" not in lines


def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    """systemd-analyze finds no unknown directive or bad value in the units."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("taskmedic")
    if not exe.exists():
        pytest.skip("the taskmedic console script is not installed in this environment")
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/taskmedic/bin/taskmedic", str(exe)))
        copies.append(str(copy))
    out = run([analyze, "verify", *copies])
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if str(tmp_path) in ln]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_dockerfile_installs_the_package_and_runs_as_a_non_root_user() -> None:
    """Docker cannot run here, so the image recipe is checked for what matters."""
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    for ln in instructions:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    assert any(re.match(r"RUN pip install \.(\s|$)", ln) for ln in instructions)
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert instructions[-2:] == [
        'ENTRYPOINT ["taskmedic"]',
        'CMD ["exporter", "--config", "/etc/taskmedic/taskmedic.yaml"]',
    ]
    # The build context ignores everything but what is copied: each COPY source is let in.
    ignore = [
        ln.strip()
        for ln in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ignore[0] == "*"
    let_in = {x[1:].rstrip("/") for x in ignore if x.startswith("!")}
    copied = {s for ln in instructions if ln.startswith("COPY ") for s in ln.split()[1:-1]}
    assert copied <= let_in


# --- the packs' SQL on real databases -------------------------------------------------------


def example_check_config(tmp_path: Path, database: str, dsn: str) -> Config:
    """The example config's checks on `database`, pointed at a test database."""
    from exporter.config import load_config

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc = {
        "databases": {database: {"dsn": dsn}},
        "checks": [c for c in doc["checks"] if c["database"] == database],
    }
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def pack_step(pack: str, rule: str) -> dict[str, Any]:
    rules = yaml.safe_load((ROOT / "rules" / "healer" / pack).read_text())["rules"]
    (found,) = [r for r in rules if r["name"] == rule]
    (step,) = found["steps"]
    return dict(step["repair"])


@pytest.mark.mariadb
async def test_ibex_pack_repair_closes_exactly_the_records_the_example_check_confirms(
    tmp_path: Path,
) -> None:
    """On MariaDB, the example's records_without_action check finds the half-written record,
    and the ibex pack's SQL, given those keys as the repair step gives them, writes its
    cancel action and touches nothing else; the check then finds none."""
    import pymysql

    from exporter.checks import run_once

    need_or_skip(reachable("127.0.0.1", 3306), "MariaDB at 127.0.0.1:3306")
    name = f"tm_test_{uuid.uuid4().hex[:12]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"USE `{name}`")
            cur.execute(
                "CREATE TABLE task_record (id BIGINT PRIMARY KEY, created_at DATETIME NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE task_action (id BIGINT PRIMARY KEY, action VARCHAR(32) NOT NULL,"
                " clock BIGINT NOT NULL)"
            )
            cur.execute(
                "INSERT INTO task_record VALUES (1, UTC_TIMESTAMP() - INTERVAL 1 HOUR),"
                " (2, UTC_TIMESTAMP() - INTERVAL 1 HOUR), (3, UTC_TIMESTAMP())"
            )
            cur.execute("INSERT INTO task_action VALUES (1, 'start', UNIX_TIMESTAMP())")
        config = example_check_config(tmp_path, "ibex", f"mysql://root@127.0.0.1:3306/{name}")
        outcome = await run_once(config, "records_without_action", pause=0.1)
        keys = [f.key for f in outcome.findings]
        assert keys == [2]  # record 3 is still within its grace
        step = pack_step("ibex.yaml", "ibex-cancel-records-without-action")
        assert step["check"] == "records_without_action"
        with admin.cursor() as cur:
            cur.execute(step["sql"], {"keys": keys})
            assert cur.rowcount == 1
            cur.execute("SELECT id, action FROM task_action ORDER BY id")
            assert cur.fetchall() == ((1, "start"), (2, "cancel"))
        again = await run_once(config, "records_without_action", pause=0.1)
        assert again.findings == []
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_timesketch_pack_repair_fails_only_given_timelines_still_processing(pg_dsn: str) -> None:
    """On PostgreSQL, the Timesketch pack's SQL marks the confirmed timelines failed with a
    reason, and leaves a timeline that finished meanwhile (or was not confirmed) alone."""
    import psycopg

    step = pack_step("timesketch.yaml", "timesketch-fail-stuck-timelines")
    assert step["check"] == "timelines"
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "CREATE TABLE timeline (id int PRIMARY KEY, status text, status_text text,"
            " celery_task_id text, updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO timeline VALUES (1, 'processing', NULL, 't1', now()),"
            " (2, 'ready', NULL, 't2', now()), (3, 'processing', NULL, 't3', now())"
        )
        cur = conn.execute(step["sql"], {"keys": [1, 2]})
        assert cur.rowcount == 1
        rows = conn.execute("SELECT id, status, status_text FROM timeline ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, "fail"), (2, "ready"), (3, "processing")]
    assert rows[0][2] and "lost" in rows[0][2]
