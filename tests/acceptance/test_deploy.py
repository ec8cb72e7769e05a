"""What users copy from rules/ and deploy/ works as shipped.

Prometheus, Alertmanager and systemd read these files with their own tools (promtool, amtool,
systemd-analyze), run here for real; the healer rule packs and the example config go through
taskmedic's own `rules check` and `config check` commands.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.services import ROOT, need_or_skip
from tests.support.deploy_files import run, secrets_env, taskmedic

PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"
RULES = ROOT / "rules" / "prometheus" / "taskmedic.rules.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
EXAMPLE = ROOT / "deploy" / "taskmedic.example.yaml"
PACKS = sorted((ROOT / "rules").glob("*/healer.yaml"))
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


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
    out = taskmedic("rules", "check", *map(str, PACKS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_config_passes_config_check_without_showing_a_secret(tmp_path: Path) -> None:
    """The annotated example is a working config; its check output masks every secret."""
    env = secrets_env(tmp_path)
    out = taskmedic("config", "check", "--config", str(EXAMPLE), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    shown = out.stdout + out.stderr
    assert "timesketch_imports" in shown
    for secret in ("env-secret-timesketch", "env-secret-redis", "dsn-secret-1", "file-secret-"):
        assert secret not in shown


# --- systemd and Docker ---------------------------------------------------------------------


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
    assert out.returncode == 0, out.stdout + out.stderr
    assert not problems, out.stdout + out.stderr


# --- the packs' SQL on real databases -------------------------------------------------------
