"""The JSON Schemas editors use are the ones the code validates with, and every YAML file
taskmedic ships (config examples, pack fragments, rule files) names one and passes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from healer.cli import main
from healer.schema import SCHEMA_FILES, Kind, schema, schema_text

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "deploy" / "schema"
# taskmedic's own files are *.yaml; Prometheus' and Alertmanager's are *.yml. Kubernetes
# objects have schemas of their own (tests/acceptance/test_deploy_kubernetes.py).
SHIPPED = sorted(
    p
    for d in ("rules", "deploy")
    for p in (ROOT / d).rglob("*.yaml")
    if "kubernetes" not in p.relative_to(ROOT).parts
)
_NAMED = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.MULTILINE)


@pytest.mark.parametrize("kind", list(SCHEMA_FILES))
def test_the_shipped_schema_is_what_the_models_generate(kind: Kind) -> None:
    shipped = (SCHEMAS / SCHEMA_FILES[kind]).read_text()
    assert shipped == schema_text(kind), "run: taskmedic schema --write deploy/schema"


def test_taskmedic_schema_prints_and_writes_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "rules"]) == 0
    assert capsys.readouterr().out == schema_text("rules")
    assert main(["schema", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SCHEMA_FILES.values())


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    rules = jsonschema.Draft202012Validator(schema("rules"))
    step = {"name": "s", "script": {"argv": ["true"]}}
    good = {"rules": [{"name": "r", "match": {"alertname": "A"}, "steps": [step]}]}
    assert [e.message for e in rules.iter_errors(good)] == []
    typo = {"rules": [{"name": "r", "match": {"alertname": "A"}, "cooldwn": "5m"}]}
    assert any("cooldwn" in e.message for e in rules.iter_errors(typo))
    config = jsonschema.Draft202012Validator(schema("config"))
    ok = {"include": ["packs/*.yaml"], "exporter": {"interval": "15s", "listen": ":9808"}}
    assert [e.message for e in config.iter_errors(ok)] == []
    assert list(config.iter_errors({"exporter": {"interval": "soon"}}))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_file_names_its_schema_and_passes_it(path: Path) -> None:
    text = path.read_text()
    named = _NAMED.search(text)
    assert named, f"{path.name} lacks '# yaml-language-server: $schema=...'"
    target = (path.parent / named.group(1)).resolve()
    assert target.parent == SCHEMAS
    assert target.name in SCHEMA_FILES.values()
    validator = jsonschema.Draft202012Validator(json.loads(target.read_text()))
    data = yaml.safe_load(text) or {}
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)] == []
