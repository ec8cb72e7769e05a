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


def test_config_check_refuses_what_the_healer_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a rule file and a repair naming an undefined check fail `config check` with
    their file and line, as they would fail `taskmedic healer`; so does a missing auth."""
    rules = (
        "rules:\n"
        "  - name: typo\n"
        "    match: {alertname: A}\n"
        "    cooldwn: 5m\n"
        "    steps: [{name: s, script: {argv: [/bin/true]}}]\n"
        "  - name: unknown-check\n"
        "    match: {alertname: B}\n"
        "    steps:\n"
        "      - name: fix\n"
        "        repair: {check: nosuch, sql: 'UPDATE t SET x = 1 WHERE id = ANY(%(keys)s)'}\n"
    )
    path = write_config(tmp_path, None, rules=rules, healer={"auth": {}})
    code, out, err = run_cli(capsys, "config", "check", "--config", str(path))
    assert code == 2
    assert "valid" not in out
    healer_rules = tmp_path / "rules" / "healer.yaml"
    assert f"{healer_rules}:4: rules[0].cooldwn: unknown key" in err
    assert (
        f"{healer_rules}:10: rules[1].steps[0].repair.check: check 'nosuch' is not defined" in err
    )
    assert "healer.auth: no credentials configured" in err


def test_config_check_shows_durations_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, None, healer={"approval_timeout": "10m", "lease": "1h30m"})
    code, out, _ = run_cli(capsys, "config", "check", "--config", str(path))
    assert code == 0
    assert "  approval_timeout: 10m\n" in out
    assert "  lease: 1h30m\n" in out
    assert "600.0" not in out


def test_the_shipped_example_config_checks_without_its_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/taskmedic.example.yaml needs variables and secret files that exist only where it
    runs: `--structure-only` checks everything else and lists what it took on trust."""
    example = Path(__file__).parents[3] / "deploy" / "taskmedic.example.yaml"
    for name in ("TIMESKETCH_DB_PASSWORD", "TIMESKETCH_REDIS_PASSWORD", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(capsys, "config", "check", "--config", str(example))
    assert code == 2
    assert "environment variable TIMESKETCH_DB_PASSWORD is not set" in err
    code, out, err = run_cli(
        capsys, "config", "check", "--structure-only", "--config", str(example)
    )
    assert code == 0, err
    assert "structure valid; secrets not checked" in out
    assert "#   environment variable not set: TIMESKETCH_DB_PASSWORD" in out
    assert "#   secret file not read: /etc/taskmedic/secrets/healer-token" in out
    assert "--structure-only" in example.read_text().split("\ninclude:")[0]


def test_rules_check_without_config_says_what_it_could_not_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "healer.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: r\n"
        "    match: {alertname: B}\n"
        "    steps: [{name: fix, repair: {check: nosuch, sql: 'SELECT 1'}}]\n"
    )
    code, out, _ = run_cli(capsys, "rules", "check", str(rules))
    assert code == 0
    assert "not verified without --config" in out
    assert "checks the rules name are defined" in out


@pytest.mark.parametrize("wrapped", [False, True], ids=["one alert", "webhook payload"])
def test_rules_test_on_an_alert_without_fingerprint_names_the_field_and_what_to_write(
    wrapped: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, None)
    alert = {"status": "firing", "labels": {"alertname": "X"}, "startsAt": "2024-01-01T00:00:00Z"}
    body = {"version": "4", "status": "firing", "receiver": "r", "alerts": [alert]}
    given = tmp_path / "alert.json"
    given.write_text(json.dumps(body if wrapped else alert))
    code, _, err = run_cli(capsys, "rules", "test", "--config", str(path), "--alert", str(given))
    assert code == 2
    where = "$.alerts[0].fingerprint" if wrapped else "$.fingerprint"
    assert f'{given}: {where}: required field is missing; write "fingerprint": ' in err
    assert "pydantic" not in err
    assert "validation error" not in err


def test_rules_test_prints_multi_line_sql_with_its_indentation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = (
        "rules:\n"
        "  - name: fix\n"
        "    match: {alertname: X}\n"
        "    params:\n"
        "      id: {label: id, pattern: '^[0-9]+$'}\n"
        "    steps:\n"
        "      - name: reset\n"
        "        sql:\n"
        "          database: app\n"
        "          query: |\n"
        "            UPDATE t\n"
        "               SET x = 1\n"
        "             WHERE id = %(id)s\n"
        "          params: {id: '{{ params.id }}'}\n"
    )
    path = write_config(
        tmp_path, None, rules=rules, top={"databases": {"app": {"dsn": "postgresql://u@h/db"}}}
    )
    argv = ("rules", "test", "--config", str(path), "--label", "alertname=X", "--label", "id=5")
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert (
        '    1. reset: sql on app params={"id": "5"}:\n'
        "                UPDATE t\n"
        "                   SET x = 1\n"
        "                 WHERE id = %(id)s\n"
    ) in out
    assert "\\x0a" not in out
