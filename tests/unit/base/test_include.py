"""`include:` merges rule packs into a user's taskmedic.yaml, keeping file:line in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.base.errors import ConfigError
from exporter.config import load_config
from healer.config import load_healer_config

ROOT = """\
databases:
  app: {{dsn: "postgresql://reader@127.0.0.1/app"}}
celery:
  app: {{broker: "redis://127.0.0.1:6379/0"}}
include: {include}
checks:
  - {{name: own, type: orphan_rows, database: app, query: "SELECT 1, now()"}}
"""

PACK = """\
# a pack fragment
periodic_tasks:
  - {cluster: app, task: app.tasks.tick, expect_every: 3m}
checks:
  - name: pack_stale
    type: stale_status
    database: app
    query: "SELECT id, updated_at FROM jobs"
    max_age: 10m
healer:
  rules: ["healer.yaml"]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_pack_is_merged_after_the_files_own_entries(tmp_path: Path) -> None:
    write(tmp_path / "packs" / "app" / "taskmedic.yaml", PACK)
    write(tmp_path / "packs" / "app" / "healer.yaml", "rules: []\n")
    cfg = load_healer_config(
        write(tmp_path / "taskmedic.yaml", ROOT.format(include='["packs/*/taskmedic.yaml"]'))
    )
    assert [c.name for c in cfg.checks] == ["own", "pack_stale"]
    assert [t.task for t in cfg.periodic_tasks] == ["app.tasks.tick"]
    # The pack's rule globs are relative to the pack, not to the including file.
    assert cfg.healer.rules == [str((tmp_path / "packs" / "app" / "healer.yaml").resolve())]


def test_an_error_in_an_included_file_names_that_file_and_line(tmp_path: Path) -> None:
    pack = write(tmp_path / "pack.yaml", PACK.replace("max_age: 10m", "max_age: soon"))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "taskmedic.yaml", ROOT.format(include='["pack.yaml"]')))
    (problem,) = err.value.problems
    assert problem.file == str(pack)
    assert problem.line == 9
    assert problem.path == "checks[0].max_age"


def test_a_check_defined_twice_across_files_points_at_the_included_copy(tmp_path: Path) -> None:
    pack = write(tmp_path / "pack.yaml", PACK.replace("pack_stale", "own"))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "taskmedic.yaml", ROOT.format(include='["pack.yaml"]')))
    (problem,) = err.value.problems
    assert (problem.file, problem.line) == (str(pack), 5)
    assert "duplicate check 'own'" in problem.message


@pytest.mark.parametrize(
    ("include", "files", "message"),
    [
        ('["missing/*.yaml"]', {}, "'missing/*.yaml' matches no file"),
        ('"pack.yaml"', {}, "must be a list of paths or globs"),
        (
            '["a.yaml"]',
            {"a.yaml": "include: [b.yaml]\n", "b.yaml": "include: [a.yaml]\n"},
            "'a.yaml' includes itself",
        ),
        ('["a.yaml"]', {"a.yaml": "databases: {}\n"}, "may hold only include, checks"),
        ('["a.yaml"]', {"a.yaml": "checks: {name: x}\n"}, "must be a list"),
        ('["a.yaml"]', {"a.yaml": "healer: {listen: 0.0.0.0:1}\n"}, "may hold only include"),
    ],
)
def test_bad_includes_are_refused_with_the_place(
    tmp_path: Path, include: str, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError) as err:
        load_healer_config(write(tmp_path / "taskmedic.yaml", ROOT.format(include=include)))
    assert any(message in p.message and p.line for p in err.value.problems), err.value.problems


def test_nothing_is_merged_when_an_included_file_is_broken(tmp_path: Path) -> None:
    write(tmp_path / "good.yaml", PACK)
    write(tmp_path / "bad.yaml", "checks: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(
            write(tmp_path / "taskmedic.yaml", ROOT.format(include='["good.yaml", "bad.yaml"]'))
        )
    assert [p.file for p in err.value.problems] == [str(tmp_path / "bad.yaml")]
