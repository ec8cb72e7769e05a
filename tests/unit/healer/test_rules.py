"""Rule files: every problem as `file:line: message`, and alert values reach plans only safely."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.base.errors import ConfigError
from healer.cli import main
from healer.plan import canonical_json, plain_numbers
from healer.rules import CompiledRule, load_rule_files
from healer.rules.models import Rule
from healer.rules.planning import RenderError, render
from healer.webhook import Alert
from tests.support.ingest_helpers import config_for


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(*paths: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_rule_files(paths)
    return [str(p) for p in exc.value.problems]


def alert(**labels: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "TaskmedicCeleryWorkerDown", **labels},
            "startsAt": datetime(2024, 5, 14, tzinfo=UTC),
            "fingerprint": "0123456789abcdef",
        }
    )


WORKER_RULE = """\
rules:
  - name: restart-worker
    match: {alertname: TaskmedicCeleryWorkerDown}
    params:
      worker: {label: worker, pattern: '^[a-z0-9_.-]+@[a-z0-9_.-]+$'}
    steps:
      - name: restart
        script:
          argv: [/usr/bin/systemctl, restart, "celery-{{ params.worker }}"]
          env: {WHO: "{{ params.worker | upper }}"}
"""


def test_rules_check_names_file_and_line_of_each_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: one
            match: {alertname: A}
            cooldown: soon
            steps:
              - name: t
                script: {argv: [x], shell: true}
          - name: two
            match_re: {instance: "(unclosed"}
            steps:
              - name: s
                sql: {database: app, query: "DELETE FROM t WHERE id = {{ params.id }}"}
              - name: u
                script: {argv: [/bin/echo, "{{ labels.instance }}"]}
        """,
    )
    assert main(["rules", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{path}:4: rules[0].cooldown: expected a duration such as 30s, 10m or 1h" in err
    assert f"{path}:7: rules[0].steps[0].script.shell: unknown key" in err
    assert (
        f"{path}:9: rules[1].match_re.instance: invalid regular expression: "
        "missing ), unterminated subpattern at position 0" in err
    )
    assert any(
        e.startswith(f"{path}:12: rules[1].steps[0].sql.query: SQL text is not a template")
        for e in err
    )
    assert any(
        e.startswith(f"{path}:14: rules[1].steps[1].script.argv[1]:") and "'labels'" in e
        for e in err
    )


def test_rules_check_accepts_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, WORKER_RULE)
    assert main(["rules", "check", str(path)]) == 0
    assert "1 rules OK" in capsys.readouterr().out


def test_yaml_syntax_error_and_duplicate_rule_names_are_located(tmp_path: Path) -> None:
    broken = write(tmp_path, "rules:\n  - name: [unclosed\n", "broken.yaml")
    assert problems(broken)[0].startswith(f"{broken}:")
    first = write(tmp_path, WORKER_RULE, "a.yaml")
    second = write(tmp_path, WORKER_RULE, "b.yaml")
    [dup] = problems(first, second)
    assert dup.startswith(f"{second}:2: rules[0].name: rule 'restart-worker' is already defined")
    assert f"{first}:2" in dup


def test_templates_may_use_only_declared_params(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: r
            match: {alertname: A}
            params:
              host: {label: instance, pattern: '[a-z]+'}
            steps:
              - name: s
                script: {argv: ["{{ params.hots }}", "{{ params }}", "{{ alert.labels }}",
                                "{{ params.host.__class__ }}", "{% for x in y %}{% endfor %}"]}
        """,
    )
    found = problems(path)
    assert any("params.hots is not declared" in p for p in found)
    assert any("use params.NAME, not params itself" in p for p in found)
    assert any("'alert'" in p for p in found)
    assert any("'y'" in p for p in found)
    assert any("private attribute '__class__'" in p for p in found)


def test_references_to_databases_apps_and_checks_are_checked_against_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "taskmedic.yaml"
    config_for(tmp_path, None)  # writes taskmedic.yaml next to rules/
    rules = write(
        tmp_path,
        """\
        rules:
          - name: r
            match: {alertname: A}
            transaction: single
            steps:
              - {name: a, sql: {database: nope, query: "SELECT 1"}}
              - {name: b, celery: {app: main, task: t.x}}
              - {name: c, repair: {check: timelines, sql: "SELECT 1"}}
        """,
    )
    assert main(["rules", "check", str(rules), "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert f"{rules}:6: rules[0].steps[0].sql.database: database 'nope' is not defined" in err
    assert f"{rules}:7: rules[0].steps[1].celery.app: celery app 'main' is not defined" in err
    assert f"{rules}:8: rules[0].steps[2].repair.check: check 'timelines' is not defined" in err


def test_a_rule_needs_a_matcher_and_steps(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules:
          - name: everything
            steps: [{name: s, script: {argv: [/bin/true]}}]
          - name: nothing
            match: {alertname: A}
            steps: []
        """,
    )
    found = problems(path)
    assert any(p.startswith(f"{path}:2: rules[0]: a rule needs match or match_re") for p in found)
    assert any(p.startswith(f"{path}:6: rules[1].steps: List should have at least") for p in found)


def test_nan_and_infinity_in_a_step_are_located_errors(tmp_path: Path) -> None:
    """JSON has neither, so no plan could hold them: the rule is refused where it says so."""
    path = write(
        tmp_path,
        """\
        rules:
          - name: odd
            match: {alertname: A}
            steps:
              - name: s
                sql: {database: app, query: "SELECT 1", params: {x: [1, .nan]}}
              - name: t
                script: {argv: [/bin/true], timeout: .inf}
        """,
    )
    found = problems(path)
    assert any(
        p.startswith(f"{path}:6: rules[0].steps[0].sql.params.x: nan is not a JSON number")
        for p in found
    ), found
    assert any(
        p.startswith(f"{path}:8: rules[0].steps[1].script.timeout: a duration must be finite")
        for p in found
    ), found


def test_render_puts_checked_params_in_argv_and_labels_in_env_and_alert_on_stdin() -> None:
    rule = Rule.model_validate(
        {
            "name": "r",
            "match": {"alertname": "TaskmedicCeleryWorkerDown"},
            "params": {"worker": {"label": "worker", "pattern": "^[a-z0-9_.-]+@[a-z0-9_.-]+$"}},
            "steps": [
                {
                    "name": "restart",
                    "script": {
                        "argv": ["/usr/bin/systemctl", "restart", "celery-{{ params.worker }}"],
                        "env": {"WHO": "{{ params.worker | upper }}"},
                    },
                }
            ],
        }
    )
    plan = render(rule, alert(worker="celery@host-2", cluster="main"))
    script = plan.steps[0].script
    assert script is not None
    assert script.argv == ["/usr/bin/systemctl", "restart", "celery-celery@host-2"]
    assert script.env["WHO"] == "CELERY@HOST-2"
    assert script.env["TASKMEDIC_LABEL_WORKER"] == "celery@host-2"
    assert script.env["TASKMEDIC_LABEL_CLUSTER"] == "main"
    assert json.loads(script.stdin)["labels"]["worker"] == "celery@host-2"
    assert plan.hash() == render(rule, alert(worker="celery@host-2", cluster="main")).hash()


@pytest.mark.parametrize(
    "value",
    [
        "x; rm -rf /tmp/taskmedic-test",
        "$(touch /tmp/taskmedic-pwned)",
        "`touch /tmp/taskmedic-pwned`",
        "celery@host\nsecond-line",
        "celery@host 2",
        "",
    ],
)
def test_a_label_that_does_not_match_its_pattern_renders_no_plan(value: str) -> None:
    rule = Rule.model_validate(
        {
            "name": "r",
            "match": {"alertname": "TaskmedicCeleryWorkerDown"},
            "params": {"worker": {"label": "worker", "pattern": "^[a-z0-9_.-]+@[a-z0-9_.-]+$"}},
            "steps": [{"name": "s", "script": {"argv": ["/bin/echo", "{{ params.worker }}"]}}],
        }
    )
    with pytest.raises(RenderError, match="does not match pattern"):
        render(rule, alert(worker=value))


def test_a_missing_label_fails_unless_the_param_has_a_default() -> None:
    spec = {
        "name": "r",
        "match": {"alertname": "A"},
        "params": {"q": {"label": "queue", "pattern": "[a-z]+"}},
        "steps": [{"name": "s", "script": {"argv": ["/bin/echo", "{{ params.q }}"]}}],
    }
    with pytest.raises(RenderError, match="has no label queue"):
        render(Rule.model_validate(spec), alert())
    spec["params"] = {"q": {"label": "queue", "pattern": "[a-z]+", "default": "celery"}}
    script = render(Rule.model_validate(spec), alert()).steps[0].script
    assert script is not None
    assert script.argv == ["/bin/echo", "celery"]


def test_the_sandbox_refuses_reaching_into_python_objects() -> None:
    rule = Rule.model_validate(
        {
            "name": "r",
            "match": {"alertname": "A"},
            "params": {"x": {"label": "x", "pattern": ".*"}},
            "steps": [{"name": "s", "script": {"argv": ["{{ params.x.__class__.__mro__ }}"]}}],
        }
    )
    with pytest.raises(RenderError):
        render(rule, alert(x="a"))


# Any text, with the characters where JSON encoders differ made common: half of it ASCII
# (DEL is ASCII, and only all-ASCII text shows an encoder that leaves it unescaped).
TEXT = st.text(
    st.sampled_from(["a", "\x7f", "\x1f", '"', "\\", "1", "e", ":"])
    | st.characters(max_codepoint=0x7F),
    max_size=12,
) | st.text(st.sampled_from(["\xe9", "\u2028", "\x7f"]) | st.characters(), max_size=12)


def json_containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Lists and objects of `inner` (a named function: hypothesis checks from the source that
    `extend` uses its argument, which it cannot always read from a lambda)."""
    return st.lists(inner, max_size=4) | st.dictionaries(
        TEXT | st.integers(0, 3), inner, max_size=4
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    # Numbers json writes in exponent form, or near where its form changes, made common.
    | st.sampled_from([1e-7, 2.5e-05, 0.0001, 0.1, 5.0, -0.0, 1e15, 1e16, 1.5e300, 5e-324])
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    json_containers,
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_canonical_json_is_always_json_dumps_text(data: object) -> None:
    """Plan hashes and rule targets are of this text, compared across versions (an
    approval, the executor's check, the cooldown of recorded actions): it is json.dumps' own,
    whatever numbers, keys or characters the data holds (no NaN or infinity: rules refuse
    them)."""
    try:
        expected = json.dumps(data, sort_keys=True, separators=(",", ":"))
    except TypeError:  # keys of mixed types json cannot sort: no plan holds them either
        return
    assert canonical_json(data, plain_numbers=plain_numbers(data)) == expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, TEXT, max_size=6))
def test_a_target_is_always_the_same_text_as_recorded_targets(labels: dict[str, str]) -> None:
    rule = CompiledRule(
        Rule.model_validate(
            {"name": "r", "match": {"a": "b"}, "steps": [{"name": "s", "script": {"argv": ["x"]}}]}
        ),
        "rules.yaml",
        1,
    )
    assert rule.target_of(labels) == json.dumps(labels, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("odd", [1e-7, 2.5e-05, 1e16, 1.5e300])
def test_a_plan_with_numbers_json_writes_otherwise_still_hashes_json_text(odd: float) -> None:
    """A timeout or parameter that json writes in exponent form: the plan's text is json's."""
    steps = [
        {"name": "q", "sql": {"database": "app", "query": "SELECT 1", "params": {"x": [odd]}}},
        {"name": "s", "script": {"argv": ["/bin/true"], "timeout": odd}},
    ]
    rule = Rule.model_validate({"name": "odd", "match": {"alertname": "A"}, "steps": steps})
    data = render(rule, alert()).model_dump(mode="json")
    assert render(rule, alert()).canonical() == json.dumps(
        data, sort_keys=True, separators=(",", ":")
    )


def test_a_rendered_plan_takes_the_fast_path_and_hashes_json_dumps_text() -> None:
    """The plans of ordinary rules are written by orjson, and are json's text."""
    rule = Rule.model_validate(
        {"name": "r", "match": {"a": "b"}, "steps": [{"name": "s", "script": {"argv": ["x"]}}]}
    )
    plan = render(rule, alert(worker="celery@app-1"))
    data = plan.model_dump(mode="json")
    assert orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode() == plan.canonical()
    assert plan.canonical() == json.dumps(data, sort_keys=True, separators=(",", ":"))
