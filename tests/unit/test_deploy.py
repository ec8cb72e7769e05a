"""What users copy from rules/ and deploy/ parses and fits together: the alerts packs match on,
the routes to the healer, the dashboard's metrics, systemd hardening, the Dockerfile."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.services import ROOT
from tests.support.deploy_files import secrets_env

RULES = ROOT / "rules" / "prometheus" / "taskmedic.rules.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "taskmedic-dashboard.json"
EXAMPLE = ROOT / "deploy" / "taskmedic.example.yaml"
PACKS = sorted((ROOT / "rules").glob("*/healer.yaml"))
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"

# The alert names the healer's rule packs match on.
PACK_ALERTS = {
    "TaskmedicStaleRows",
    "TaskmedicOrphanTasks",
    "TaskmedicOrphanRows",
    "TaskmedicCheckDown",
    "TaskmedicCeleryWorkerDown",
    "TaskmedicCeleryBrokerDown",
    "TaskmedicCeleryTaskOverdue",
}

# The exporter's metric names.
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

    names = {"taskmedic_actions"}  # read from the journal at scrape time
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
    """A YAML syntax error in a file users copy is caught here, not in their Prometheus.
    Kubernetes manifests may hold several documents (`---`); each is a mapping."""
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents
    assert all(isinstance(d, dict) for d in documents)


def test_alerting_rules_define_the_alerts_packs_match_on_real_metric_names() -> None:
    """Every alert the healer packs rely on exists, and no rule reads a metric nobody exports."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names >= PACK_ALERTS
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
    assert PACKS, "no healer rule packs under rules/*/healer.yaml"
    for pack in PACKS:
        for rule in yaml.safe_load(pack.read_text())["rules"]:
            alertname = rule["match"]["alertname"]
            assert alertname in defined, f"{pack.parent.name}: {rule['name']}"
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
    assert "credentials_file" in auth
    assert "credentials" not in auth


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
    assert dash["title"]
    assert dash["uid"]
    assert dash["schemaVersion"] >= 30
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
    assert "taskmedic_celery_worker_up" in used
    assert "taskmedic_actions_total" in used


# --- Prometheus and Alertmanager's own tools ------------------------------------------------


# --- taskmedic's own checks -----------------------------------------------------------------


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
        "tacticalrmm-beat-stopped",
        "tacticalrmm-worker-crashed",
        "timesketch-fail-orphaned-imports",
        "ibex-cancel-unrecorded-tasks",
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
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
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
