"""`on:` in a rule: where a script step runs, checked when the rule loads and when it is
rendered for an alert (a label reaches the host only through its declared pattern)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from exporter.base.errors import ConfigError
from healer.rules import load_rules
from healer.rules.models import Rule
from healer.rules.planning import RenderError, render
from healer.webhook import Alert
from tests.support.ingest_helpers import config_for


def alert(**labels: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "SpoolFull", **labels},
            "startsAt": datetime(2026, 12, 3, tzinfo=UTC),
            "fingerprint": "0123456789abcdef",
        }
    )


def rule(on: dict[str, Any], **step: Any) -> Rule:
    return Rule.model_validate(
        {
            "name": "clear-spool",
            "match": {"alertname": "SpoolFull"},
            "steps": [{"name": "clear", "on": on, "script": {"argv": ["clear-spool"]}, **step}],
        }
    )


def test_a_list_of_hosts_is_planned_as_written() -> None:
    r = rule(
        {"hosts": ["app1", "app2", "app3"], "batch": 2, "tolerance": 1, "pause_after": ["app1"]}
    )
    (step,) = render(r, alert()).steps
    assert step.on is not None
    assert step.on.hosts == ["app1", "app2", "app3"]
    assert (step.on.batch, step.on.tolerance, step.on.pause_after) == (2, 1, ["app1"])


def test_the_host_group_of_the_pattern_picks_the_host_out_of_a_label() -> None:
    r = rule({"host_from_label": "instance", "pattern": "(?P<host>[a-z0-9.-]+):[0-9]+"})
    (step,) = render(r, alert(instance="app7.example.org:9100")).steps
    assert step.on is not None
    assert step.on.hosts == ["app7.example.org"]


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({}, "the alert has no label instance"),
        ({"instance": "app7; rm -rf /:9100"}, "does not match pattern"),
        ({"instance": "app7:http"}, "does not match pattern"),
    ],
)
def test_a_label_that_does_not_match_its_pattern_runs_nothing(
    labels: dict[str, str], why: str
) -> None:
    r = rule({"host_from_label": "instance", "pattern": "(?P<host>[a-z0-9.-]+):[0-9]+"})
    with pytest.raises(RenderError, match=why):
        render(r, alert(**labels))


def test_a_pattern_that_admits_what_no_queue_may_carry_is_still_refused() -> None:
    r = rule({"host_from_label": "instance", "pattern": ".+"})
    with pytest.raises(RenderError, match="is not a host name"):
        render(r, alert(instance="app 7 *"))


@pytest.mark.parametrize(
    ("on", "why"),
    [
        ({"hosts": ["a"], "host_from_label": "instance", "pattern": ".+"}, "exactly one of"),
        ({"host_from_label": "instance"}, "needs a pattern"),
        ({"hosts": ["a", "a"]}, "listed twice"),
        ({"hosts": ["a"], "pause_after": ["b"]}, "pause_after names hosts not in hosts: b"),
        ({"hosts": ["a b"]}, "should match pattern"),
        ({"hosts": ["a"], "tolerance": -1}, "greater than or equal to 0"),
        (
            {
                "host_from_label": "instance",
                "pattern": "(",
            },
            "not a valid regular expression",
        ),
    ],
)
def test_a_wrong_on_is_refused_when_the_rule_loads(on: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        rule(on)


def test_on_is_for_script_steps_only() -> None:
    with pytest.raises(ValidationError, match="on: is for script steps"):
        Rule.model_validate(
            {
                "name": "r",
                "match": {"alertname": "A"},
                "steps": [{"name": "s", "on": {"hosts": ["a"]}, "http": {"url": "http://x/"}}],
            }
        )


ON_RULES = """\
rules:
  - name: restart-everywhere
    match: {alertname: WorkersDown}
    steps:
      - name: restart
        on: {hosts: [app1, app2]}
        script: {argv: [systemctl, restart, worker]}
"""


def test_a_step_on_other_hosts_needs_the_agents_section(tmp_path: Path) -> None:
    config = config_for(tmp_path, None, rules=ON_RULES)
    with pytest.raises(ConfigError) as err:
        load_rules(config)
    (problem,) = err.value.problems
    assert str(problem).startswith(f"{tmp_path / 'rules' / 'healer.yaml'}:6")
    assert "the config needs an agents: section" in str(problem)


def test_with_the_agents_section_the_rule_loads(tmp_path: Path) -> None:
    key = tmp_path / "agents-key"
    key.write_text("k" * 32)
    agents = {"broker": "redis://127.0.0.1:6379/3", "secret_file": str(key)}
    config = config_for(tmp_path, None, rules=ON_RULES, top={"agents": agents})
    assert [r.rule.name for r in load_rules(config)] == ["restart-everywhere"]
    assert config.agents is not None
    assert config.agents.queue("app1") == "taskmedic.agent.app1"


def test_a_short_agents_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    key = tmp_path / "agents-key"
    key.write_text("short")
    agents = {"broker": "redis://127.0.0.1:6379/3", "secret_file": str(key)}
    with pytest.raises(ConfigError, match=f"the key in {key} is shorter than 16 characters"):
        config_for(tmp_path, None, rules=ON_RULES, top={"agents": agents})
