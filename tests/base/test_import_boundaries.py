"""The two halves meet only through the base layer: read from the source, no service needed.

`exporter/` knows nothing of `healer/`. The healer imports the shared base layer
(`exporter.base.*`), the exporter's checks (a `repair` step re-runs one), `CheckUnknown`
(`exporter.errors`) and `Config` (`exporter.config`, the model of the shared file that
`HealerConfig` extends). One exception: `healer/cli.py` is the `taskmedic` command, and mounts
the exporter's subcommands (`exporter.cli`) next to the healer's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEALER_MAY_IMPORT = ("exporter.checks", "exporter.errors", "exporter.config")
ENTRY_POINT_MAY_IMPORT = {"healer/cli.py": ("exporter.cli",)}


def imports(package: str) -> Iterator[tuple[str, int, str]]:
    """(file relative to the repository, line, module) of every absolute import in a package;
    `from a import b` yields `a.b`, since `b` may be a module."""
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield rel, node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    yield rel, node.lineno, f"{node.module}.{alias.name}"


def within(module: str, allowed: str) -> bool:
    return module == allowed or module.startswith(allowed + ".")


def healer_may_import(file: str, module: str) -> bool:
    if not within(module, "exporter"):
        return True
    if within(module, "exporter.base"):
        return True
    allowed = HEALER_MAY_IMPORT + ENTRY_POINT_MAY_IMPORT.get(file, ())
    # `from exporter.checks import run_once` names a module and one of its attributes.
    return any(module == a or module.rpartition(".")[0] == a for a in allowed)


def test_the_healer_imports_only_the_base_layer_checks_errors_and_config() -> None:
    wrong = [
        f"{file}:{line}: {module}"
        for file, line, module in imports("healer")
        if not healer_may_import(file, module)
    ]
    assert wrong == []


def test_the_exporter_never_imports_the_healer() -> None:
    wrong = [
        f"{file}:{line}: {module}"
        for file, line, module in imports("exporter")
        if within(module, "healer")
    ]
    assert wrong == []


def test_the_base_layer_imports_nothing_else_of_the_exporter() -> None:
    """Both halves stand on it, so it cannot stand on either."""
    wrong = [
        f"{file}:{line}: {module}"
        for file, line, module in imports("exporter/base")
        if within(module, "exporter") and not within(module, "exporter.base")
    ]
    assert wrong == []


def test_the_boundary_check_sees_a_forbidden_import() -> None:
    """The rule itself: the exporter's runner or database access is off limits to the healer,
    and only the `taskmedic` entry point may mount the exporter's subcommands."""
    assert not healer_may_import("healer/executor/claims.py", "exporter.runner.Runner")
    assert not healer_may_import("healer/steps/sql.py", "exporter.databases.Database")
    assert not healer_may_import("healer/__init__.py", "exporter.__version__")
    assert not healer_may_import("healer/app.py", "exporter.cli")
    assert healer_may_import("healer/cli.py", "exporter.cli")
    assert healer_may_import("healer/steps/repair.py", "exporter.checks.run_once")
    assert healer_may_import("healer/config.py", "exporter.base.types.Duration")
