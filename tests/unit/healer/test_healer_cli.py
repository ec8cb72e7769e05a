"""`taskmedic rules test` and `config check`, which need no journal: what an operator types
and reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healer.cli import main
from tests.support.ingest_helpers import (
    PAYLOADS,
    write_config,
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rules_test_shows_matching_rules_and_rendered_steps_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, None)
    code, out, _ = run_cli(
        capsys,
        "rules",
        "test",
        "--config",
        str(path),
        "--alert",
        str(PAYLOADS / "grouped_workers_down.json"),
    )
    assert code == 0
    assert out.count("rule restart-worker") == 3
    assert '["/bin/echo", "restart", "beat@app-host-2"]' in out
    assert "Nothing was executed." in out

    injected = tmp_path / "injected.json"
    injected.write_text(
        (PAYLOADS / "injection_workers_down.json").read_text().replace("@MARKDIR@", str(tmp_path))
    )
    code, out, _ = run_cli(
        capsys, "rules", "test", "--config", str(path), "--alert", str(injected), "--json"
    )
    outcomes = json.loads(out)
    assert [r["state"] for o in outcomes for r in o["rules"]] == ["failed"] * 3
    assert all(r["plan"]["steps"] == [] for o in outcomes for r in o["rules"])
    assert not list(tmp_path.glob("pwned_*"))


def test_rules_test_reports_a_bad_payload_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, None)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_cli(capsys, "rules", "test", "--config", str(path), "--alert", str(bad))
    assert code == 2
    assert "not valid JSON" in err


def test_config_check_validates_the_healer_section_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file, one verdict: a mistake in `healer:` fails `taskmedic config check` with its
    line, exactly like a mistake in the exporter's part."""
    path = tmp_path / "taskmedic.yaml"
    path.write_text(
        "databases: {app: {dsn: 'postgresql://u:hunter2@h/db'}}\n"
        "healer:\n"
        "  listen: 9809\n"
        "  auth: {bearer_token: s3cret}\n"
    )
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: healer.listen: expected host:port" in err
    assert "hunter2" not in err
    assert "s3cret" not in err
