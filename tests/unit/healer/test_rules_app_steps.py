"""Rule files with the steps app packs use (http, verify, repairs by http or through a write
database entry) are checked at load with file:line errors, and render to the plan that runs."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.base.errors import ConfigError
from healer.cli import main
from healer.plan import REPAIR_KEY
from healer.rules import load_rule_files
from healer.rules.planning import render
from healer.webhook import Alert


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as exc:
        load_rule_files([path])
    return [str(p).removeprefix(f"{path}:") for p in exc.value.problems]


RULE = """\
rules:
  - name: r
    match: {{alertname: A}}
    params:
      task: {{label: task, pattern: '[a-z_.]+'}}
    steps:
      - name: s
{step}
"""


def step(text: str) -> str:
    return RULE.format(step=textwrap.indent(textwrap.dedent(text), " " * 8))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "http: {url: 'http://h/{{ key }}'}",
            "8: rules[0].steps[0].http.url: template uses 'key': templates may use only params",
        ),
        (
            "repair: {check: c, http: {url: 'http://h/{{ key | upper }}'}}",
            "8: rules[0].steps[0].repair.http.url: write the key as {{ key }}",
        ),
        (
            "repair: {check: c, http: {url: 'http://h/', headers: {X: '{{ key }}'}}}",
            "8: rules[0].steps[0].repair.http.headers.X: template uses 'key'",
        ),
        (
            "repair: {check: c, sql: 'SELECT 1', http: {url: 'http://h/'}}",
            "8: rules[0].steps[0].repair: a repair takes exactly one of sql or http",
        ),
        (
            "repair: {check: c, database: w, http: {url: 'http://h/'}}",
            "8: rules[0].steps[0].repair: database is for sql repairs",
        ),
        (
            "http: {url: 'ftp://h/x'}",
            "8: rules[0].steps[0].http.url: expected an http:// or https:// URL",
        ),
        (
            "verify: {series: 'up{job=\"x\"}'}",
            "8: rules[0].steps[0].verify.series: String should match pattern",
        ),
        (
            "verify: {series: up, labels: {job: '{{ params.nope }}'}}",
            "8: rules[0].steps[0].verify.labels.job: params.nope is not declared",
        ),
        (
            "verify: {series: up, within: 0s}",
            "8: rules[0].steps[0].verify: within and interval must be positive durations",
        ),
    ],
)
def test_bad_app_steps_are_located_errors(tmp_path: Path, text: str, expected: str) -> None:
    got = problems(tmp_path, step(text))
    assert any(p.startswith(expected) for p in got), got


def alert(**labels: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "A", **labels},
            "startsAt": datetime(2026, 12, 1, tzinfo=UTC),
            "fingerprint": "0123456789abcdef",
        }
    )


def test_http_and_verify_templates_render_from_params_and_the_key_stays_for_run_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        step(
            """\
            repair:
              check: c
              http:
                method: PUT
                url: "http://api/{{ params.task }}/{{ key }}"
                basic_auth: {username: u, password_file: /run/secrets/pw}
                json: {action: cancel, id: "{{ key }}", task: "{{ params.task }}"}
              """
        )
        + """\
      - name: v
        verify:
          series: taskmedic_celery_task_overdue
          labels: {task: "{{ params.task }}"}
          within: 5m
"""
    )
    (rule,) = load_rule_files([path]).rules
    plan = render(rule.rule, alert(task="core.tasks.x"))
    repair, verify = plan.steps
    assert repair.repair is not None
    assert repair.repair.http is not None
    assert repair.repair.http.url == f"http://api/core.tasks.x/{REPAIR_KEY}"
    assert repair.repair.http.body == {"action": "cancel", "id": REPAIR_KEY, "task": "core.tasks.x"}
    assert repair.repair.http.basic_auth is not None
    assert repair.repair.http.basic_auth.password_file == "/run/secrets/pw"
    assert verify.verify is not None
    assert verify.verify.labels == {"task": "core.tasks.x"}
    assert verify.verify.within == 300


def test_a_repair_naming_an_undefined_write_database_is_refused_with_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "taskmedic.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            databases:
              app: {dsn: "postgresql://reader@127.0.0.1/app"}
            checks:
              - {name: c, type: orphan_rows, database: app, query: "SELECT 1, now()"}
            healer:
              rules: [rules.yaml]
            """
        )
    )
    (tmp_path / "rules.yaml").write_text(
        step("repair: {check: c, database: app_write, sql: 'UPDATE t SET x = 1'}")
    )
    assert main(["rules", "check", str(tmp_path / "rules.yaml"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "rules[0].steps[0].repair.database: database 'app_write' is not defined" in err


def test_rules_test_takes_the_alert_as_labels_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "taskmedic.yaml"
    config.write_text("healer:\n  rules: [rules.yaml]\n")
    (tmp_path / "rules.yaml").write_text(
        step("verify: {series: taskmedic_celery_task_overdue, labels: {task: '{{ params.task }}'}}")
    )
    args = ["rules", "test", "--config", str(config), "--label", "alertname=A"]
    assert main([*args, "--label", "task=core.tasks.x", "--json"]) == 0
    (outcome,) = json.loads(capsys.readouterr().out)
    assert outcome["labels"] == {"alertname": "A", "task": "core.tasks.x"}
    assert outcome["status"] == "firing"
    (rule,) = outcome["rules"]
    assert rule["rule"] == "r"
    assert rule["state"] == "pending"
    # A label that breaks the rule's pattern: the plan fails, nothing would run.
    assert main([*args, "--label", "task=core tasks; rm -rf /"]) == 0
    assert "would be failed" in capsys.readouterr().out
    # Resolved alerts match only rules with on: resolved.
    assert main([*args, "--label", "task=x", "--resolved", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["rules"] == []
    assert main(["rules", "test", "--config", str(config), "--label", "task=x"]) == 2
    assert "--label alertname=NAME" in capsys.readouterr().err
    assert main([*args, "--label", "bad-name=x"]) == 2
    assert "label 'bad-name=x': write NAME=VALUE" in capsys.readouterr().err
