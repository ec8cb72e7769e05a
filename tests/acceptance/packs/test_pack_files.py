"""Every rule pack under rules/ is complete and works as shipped: its Prometheus tests pass in
promtool, and each of its example alerts, run through `taskmedic rules test` with the example
config that includes every pack, matches a rule of that pack and renders a plan."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from healer.cli import main
from tests.services import ROOT, need_or_skip

PACKS = sorted(p.parent for p in (ROOT / "rules").glob("*/healer.yaml"))
EXAMPLE = ROOT / "deploy" / "taskmedic.example.yaml"
ALERTS = sorted(a for pack in PACKS for a in (pack / "alerts").glob("*.json"))


def test_the_shipped_packs_are_the_three_apps_and_the_generic_celery_one() -> None:
    assert [p.name for p in PACKS] == ["celery", "ibex", "tacticalrmm", "timesketch"]


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.name)
def test_a_pack_has_its_fragment_rules_prometheus_tests_and_example_alerts(pack: Path) -> None:
    for name in ("taskmedic.yaml", "healer.yaml", "prometheus.test.yml"):
        assert (pack / name).is_file(), f"{pack.name}/{name} is missing"
    assert list((pack / "alerts").glob("*.json")), f"{pack.name}/alerts/ has no example"


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.name)
def test_promtool_passes_the_packs_alert_tests(pack: Path) -> None:
    promtool = shutil.which("promtool")
    need_or_skip(promtool is not None, "promtool (Debian package prometheus)")
    assert promtool is not None
    got = subprocess.run(
        [promtool, "test", "rules", str(pack / "prometheus.test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stdout + got.stderr


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment the example config reads its secrets and passwords from."""
    names = ("ibex-db-password", "journal-password", "healer-token", "healer-ops-password")
    for name in (*names, "agents-key"):
        (tmp_path / name).write_text("not-a-real-secret\n")
    (tmp_path / "timesketch-write-dsn").write_text("postgresql://tm_rw@127.0.0.1/timesketch\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("TIMESKETCH_DB_PASSWORD", "not-a-real-password")
    monkeypatch.setenv("TIMESKETCH_REDIS_PASSWORD", "not-a-real-password")
    return tmp_path


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: f"{a.parent.parent.name}/{a.name}")
def test_each_example_alert_matches_its_pack_and_renders_a_plan(
    alert: Path, example_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = alert.parent.parent
    config = EXAMPLE
    if pack.name == "celery":  # not in the example: a user's own cluster named "celery"
        config = example_env / "celery.yaml"
        config.write_text(
            f"include: [{pack / 'taskmedic.yaml'}]\n"
            "celery:\n  celery: {broker: 'redis://127.0.0.1:6379/0'}\n"
        )
    assert main(["rules", "test", "--config", str(config), "--alert", str(alert), "--json"]) == 0
    outcomes = json.loads(capsys.readouterr().out)
    assert outcomes, "the example holds no alert"
    for outcome in outcomes:
        rules = outcome["rules"]
        assert rules, f"{alert.name}: no rule matches {outcome['labels']}"
        for rule in rules:
            assert Path(rule["source"].rsplit(":", 1)[0]).parent == pack
            assert rule["state"] in ("pending", "awaiting_approval"), rule["reason"]
            assert rule["plan"]["steps"]


def test_the_example_config_passes_config_check_with_every_pack(
    example_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", "--config", str(EXAMPLE)]) == 0
    shown = capsys.readouterr().out
    assert "not-a-real" not in shown
    for check in ("timesketch_imports", "ibex_unrecorded_tasks"):
        assert check in shown
    assert "core.tasks.cache_db_fields_task" in shown
