"""The shipped polkit rule grants the healer exactly the unit restarts the packs need.

polkit evaluates rules with its own JavaScript engine, which is not here; node runs the same
file against a stand-in `polkit` object with polkit's documented interface (addRule,
Result, action.id, action.lookup, subject.user), so what is tested is the rule's own logic.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.services import ROOT, need_or_skip

RULE = ROOT / "deploy" / "polkit" / "50-taskmedic.rules"

HARNESS = """
const fs = require("fs");
const rules = [];
const polkit = {
  Result: {YES: "yes", NO: "no", NOT_HANDLED: null},
  addRule: (f) => rules.push(f),
};
new Function("polkit", fs.readFileSync(process.argv[1], "utf8"))(polkit);
const out = JSON.parse(process.argv[2]).map(([id, user, unit, verb]) => {
  const action = {id, lookup: (k) => ({unit, verb})[k]};
  return rules.map((r) => r(action, {user})).find((r) => r !== null) || null;
});
console.log(JSON.stringify(out));
"""

MANAGE = "org.freedesktop.systemd1.manage-units"
CASES = [
    ((MANAGE, "taskmedic", "celerybeat.service", "restart"), "yes"),
    ((MANAGE, "taskmedic", "celery.service", "restart"), "yes"),
    ((MANAGE, "taskmedic", "celery.service", "start"), "yes"),
    ((MANAGE, "taskmedic", "celery.service", "stop"), None),
    ((MANAGE, "taskmedic", "postgresql.service", "restart"), None),
    ((MANAGE, "www-data", "celerybeat.service", "restart"), None),
    ((MANAGE.replace("units", "unit-files"), "taskmedic", "celery.service", "restart"), None),
]


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    need_or_skip(found is not None, "node (to check the polkit rule)")
    assert found is not None
    return found


def test_the_rule_is_valid_javascript(node: str) -> None:
    # On stdin: node refuses a file named *.rules as an unknown module type.
    subprocess.run([node, "--check"], input=RULE.read_bytes(), check=True, timeout=30)


def test_only_restarts_of_the_celery_units_by_taskmedic_are_granted(node: str) -> None:
    got = subprocess.run(
        [node, "-e", HARNESS, str(RULE), json.dumps([c for c, _ in CASES])],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(got.stdout) == [want for _, want in CASES]
