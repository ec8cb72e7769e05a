"""A hostile YAML file is a located config error (exit 2), never a crash or a long stall."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.base.configfile import parse_yaml
from exporter.base.errors import ConfigError
from healer.cli import main

# Nine levels of ten aliases each: a billion strings once expanded.
LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("checks: &x\n  - *x\n", 2),  # refers to itself
        (LAUGHS, 2),
        ("base: &b {grace: 1m}\nother: *b\n", 2),
    ],
    ids=["cycle", "billion-laughs", "plain-alias"],
)
def test_an_alias_is_refused_at_its_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "taskmedic.yaml", {})
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == ("taskmedic.yaml", line)
    assert "aliases" in problem.message


def test_deep_nesting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_yaml("a: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml", {})


def test_config_check_exits_2_naming_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "taskmedic.yaml"
    config.write_text("databases: &d\n  app: *d\n")
    assert main(["config", "check", "--config", str(config)]) == 2
    assert f"{config}:2:" in capsys.readouterr().err
