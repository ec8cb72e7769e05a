"""The demo's healer config and rules load with every reference resolved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHECKS = ("tree_status_cache", "timelines", "records_without_action")


def test_demo_healer_config_and_rules_load_with_every_reference_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--healer` writes a taskmedic.yaml and rules the healer accepts: the Celery app, the
    checks and the token file they name all exist."""
    from demo import configs, healing
    from healer.config import load_healer_config
    from healer.rules import load_rules

    monkeypatch.setenv("TASKMEDIC_DEMO_STATE", str(tmp_path / "state"))
    files = healing.write_healer_files(tmp_path, "127.0.0.1:9809")
    assert files.token_file.stat().st_mode & 0o077 == 0, "the token is readable by others"
    config_file = configs.write_config(
        tmp_path / "taskmedic.yaml",
        dsn="postgresql://postgres:@/taskmedic_demo?host=/tmp/x",
        broker="redis+socket:///tmp/x/redis.socket?virtual_host=0",
        listen="127.0.0.1:9808",
        healer=healing.healer_section(files, "postgresql://postgres:@/journal?host=/tmp/x"),
    )
    config = load_healer_config(config_file.path)
    assert [c.name for c in config.checks] == list(CHECKS)
    assert config.healer.auth.secret_token() == files.token_file.read_text().strip()
    rules = load_rules(config)
    assert {r.name for r in rules} == {r["name"] for r in healing.RULES["rules"]}
    restart = next(r for r in rules if r.name == "demo-restart-worker")
    assert restart.rule.match["alertname"] == "TaskmedicCeleryWorkerDown"
    assert restart.rule.steps[0].script is not None
    assert restart.rule.steps[0].script.argv[-2:] == ["--dir", str(tmp_path)]
    # A script step's environment is minimal: the demo's state folder is named in it.
    assert restart.rule.steps[0].script.env == {"TASKMEDIC_DEMO_STATE": str(tmp_path / "state")}


def test_the_demo_fires_the_shipped_alert_for_each_fault_it_offers() -> None:
    """Without Prometheus the demo turns /metrics into the alerts the shipped rules would
    fire: a stopped beat, a killed worker's lost imports and the worker itself, an orphan
    record; nothing for healthy values."""
    from demo.alerts import active_alerts

    samples = [
        ("taskmedic_stale_rows", {"check": "tree_status_cache"}, 5.0),
        ("taskmedic_orphan_tasks", {"check": "timelines", "reason": "lost"}, 2.0),
        ("taskmedic_orphan_tasks", {"check": "timelines", "reason": "finished"}, 0.0),
        ("taskmedic_orphan_rows", {"check": "records_without_action"}, 1.0),
        ("taskmedic_celery_worker_crashed", {"cluster": "demo", "worker": "w@h"}, 1.0),
        ("taskmedic_celery_worker_crashed", {"cluster": "demo", "worker": "ok@h"}, 0.0),
        ("taskmedic_check_up", {"check": "timelines"}, 1.0),
    ]
    got = {tuple(sorted(dict(a).items())) for a in active_alerts(samples)}
    assert got == {
        (
            ("alertname", "TaskmedicStaleRows"),
            ("check", "tree_status_cache"),
            ("severity", "warning"),
        ),
        (("alertname", "TaskmedicOrphanTasks"), ("check", "timelines"), ("severity", "warning")),
        (
            ("alertname", "TaskmedicOrphanRows"),
            ("check", "records_without_action"),
            ("severity", "warning"),
        ),
        (
            ("alertname", "TaskmedicCeleryWorkerDown"),
            ("cluster", "demo"),
            ("severity", "critical"),
            ("worker", "w@h"),
        ),
    }
    assert active_alerts([("taskmedic_stale_rows", {"check": "c"}, 0.0)]) == set()


def test_a_demo_alert_is_a_webhook_the_healer_accepts_with_the_time_its_fault_began() -> None:
    """The body the demo posts passes the healer's own webhook validation, and two faults at
    different times are two alerts (distinct startsAt), not a duplicate."""
    from demo.alerts import payload
    from healer.webhook import parse_notification

    labels = {"alertname": "TaskmedicOrphanRows", "check": "records_without_action"}
    first = payload(labels, starts_at=1_800_000_000.0, ends_at=None)
    later = payload(labels, starts_at=1_800_000_090.5, ends_at=None)
    note, _ = parse_notification(json.dumps(first).encode())
    (alert,) = note.alerts
    assert alert.status == "firing"
    assert alert.labels == labels
    assert alert.starts_at.timestamp() == 1_800_000_000.0
    assert alert.ends_at_or_none is None
    assert later["alerts"][0]["startsAt"] != first["alerts"][0]["startsAt"]
    resolved, _ = parse_notification(
        json.dumps(payload(labels, starts_at=1_800_000_000.0, ends_at=1_800_000_060.0)).encode()
    )
    assert resolved.status == "resolved"
    assert resolved.alerts[0].ends_at_or_none is not None


def test_faults_typed_in_the_terminal_by_number_or_name() -> None:
    """In the demo's terminal `1` is the first fault of the guide's list, a name is itself,
    an empty line is nothing."""
    from demo.faults import FAULTS, KeyReader

    reader = KeyReader()
    for line in ("1", "stop-beat", "", str(len(FAULTS))):
        reader.lines.put(line)
    names = list(FAULTS)
    assert reader.poll() == [names[0], "stop-beat", names[-1]]
    assert reader.poll() == []


def test_the_license_is_an_spdx_expression_so_installing_does_not_warn() -> None:
    """setuptools 77+ deprecates `license = {text = ...}` and warned twice on every
    `make demo`; an SPDX string needs setuptools 77 in the build requirements."""
    import tomllib

    from tests.services import ROOT

    pyproject = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
