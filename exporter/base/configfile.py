"""Reading YAML files into plain data while remembering where every key came from.

PyYAML's node tree keeps the line of every value; we build plain dicts and lists from it and a
map from key path to line, so that a pydantic error at ``checks[2].grace`` can be reported as
``taskmedic.yaml:14: checks[2].grace: ...``. `${VAR}` and `${VAR:-default}` are expanded in
string scalars here (``$$`` is a literal dollar), so interpolated values are validated like any
other. Nothing else in taskmedic parses YAML.

`load` is the whole way from a file to a validated model: any pydantic model, so the exporter
and the healer load the same file each with its own model. On the way it follows the file's
top-level `include:` list (paths or globs, relative to the including file): rule packs ship
their checks, periodic tasks and healer rule files as a fragment a user includes, so a pack is
copied, never edited. Merged entries keep the file and line they came from.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import yaml
from pydantic import BaseModel, ValidationError

from exporter.base import structure_only
from exporter.base.errors import ConfigError, Problem

__all__ = [
    "CrossChecked",
    "Located",
    "Path_",
    "expand_vars",
    "format_path",
    "load",
    "load_with_includes",
    "load_yaml",
    "parse_yaml",
    "validate",
]

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Located:
    """Plain data from a YAML file plus the line of every key path in it."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    # Entries merged in from included files: their path here -> (file, their path there).
    origins: dict[Path_, tuple[str, Path_]] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of the deepest existing prefix of `path` (a missing key: its parent)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def origin_of(self, path: Path_) -> tuple[str, Path_]:
        """The file `path` came from and its path in that file (merged entries come from an
        included file, under another index)."""
        for end in range(len(path), 0, -1):
            origin = self.origins.get(tuple(path[:end]))
            if origin is not None:
                return origin[0], (*origin[1], *path[end:])
        return self.file, path

    def problem(self, path: Path_, message: str) -> Problem:
        file, there = self.origin_of(path)
        return Problem(file, self.line_of(path), format_path(there), message)


def format_path(path: Path_) -> str:
    """`("checks", 2, "grace")` -> `checks[2].grace`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}`, `${VAR:-default}` and `$$`; raise KeyError naming a missing variable."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is None or (got == "" and default is not None):
            if default is None:
                if (record := structure_only.active()) is not None:
                    record.note(record.variables, name)
                    return structure_only.PLACEHOLDER
                raise KeyError(name)
            return default
        return got

    return _VAR.sub(repl, value)


def load_yaml(path: str | Path, env: Mapping[str, str] | None = None) -> Located:
    """Parse one YAML file into `Located` data; syntax errors become a located ConfigError."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read file: {exc.strerror}")]) from exc
    return parse_yaml(text, file, os.environ if env is None else env)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing aliases (`*name`).

    An alias is the same node again: one that refers to its own parent makes a cycle, and a
    few nested ones (the "billion laughs") expand a 1 kB file into billions of values. No
    taskmedic file needs them, so the first alias is an error at its line.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not supported", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, file: str, env: Mapping[str, str]) -> Located:
    """Like `load_yaml`, from text (used by tests and by `rules check` on stdin)."""
    try:
        node = yaml.compose(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(file, line, "", f"invalid YAML: {msg}")]) from exc
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError([Problem(file, None, "", "invalid YAML: nested too deeply")]) from None
    located = Located(file, None)
    problems: list[Problem] = []
    if node is not None:
        try:
            located.data = _build(node, (), located, env, problems)
        except RecursionError:
            raise ConfigError([Problem(file, None, "", "nested too deeply")]) from None
    if problems:
        raise ConfigError(problems)
    return located


_scalars = yaml.constructor.SafeConstructor()


def _build(
    node: yaml.Node, path: Path_, located: Located, env: Mapping[str, str], problems: list[Problem]
) -> Any:
    located.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(located.problem(path, "mapping keys must be plain strings"))
                continue
            key = str(key_node.value)
            if key == "<<":
                problems.append(located.problem(path, "YAML merge keys (<<) are not supported"))
                continue
            if key in out:
                line = key_node.start_mark.line + 1
                problems.append(
                    Problem(located.file, line, format_path((*path, key)), "duplicate key")
                )
                continue
            located.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*path, key), located, env, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), located, env, problems) for i, item in enumerate(node.value)
        ]
    value = _scalars.construct_object(node)
    if isinstance(value, str) and "$" in value:
        try:
            return expand_vars(value, env)
        except KeyError as exc:
            problems.append(located.problem(path, f"environment variable {exc.args[0]} is not set"))
            return value
    return value


def validate(model: type[M], located: Located, context: dict[str, Any] | None = None) -> M:
    """Validate located data against a pydantic model; errors come back located, values hidden.

    Error messages never echo the offending input, because it may be a secret (a DSN, a token).
    """
    try:
        return model.model_validate(located.data or {}, context=context)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            path = _data_path(located.data, err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            msg = msg.removeprefix("Value error, ")
            problems.append(located.problem(path, msg))
        raise ConfigError(problems) from None


def _data_path(data: Any, loc: tuple[int | str, ...]) -> Path_:
    """Map a pydantic error location onto the data, dropping union tags and validator names."""
    path: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        in_dict = isinstance(cur, dict) and isinstance(part, str) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_dict or in_list:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and i == len(loc) - 1:
            path.append(part)  # a missing or unknown key: name it
        elif isinstance(cur, dict) and isinstance(part, str) and i < len(loc) - 1:
            continue  # a discriminated-union tag such as "orphan_tasks"
    return tuple(path)


@runtime_checkable
class CrossChecked(Protocol):
    """A model with checks a model alone cannot express (references between its sections)."""

    def loaded_from(self, located: Located) -> None:
        """Called once the file validated: raise ConfigError with located problems, or keep
        what the model needs of its file (where it is, to resolve relative paths)."""


# What an included file may hold: lists that are appended to the including file's own, and
# `healer.rules` globs (made absolute, since they are relative to the file that names them).
INCLUDABLE_LISTS = ("checks", "periodic_tasks")


def load_with_includes(path: str | Path, env: Mapping[str, str] | None = None) -> Located:
    """`load_yaml`, then every file named by top-level `include:` merged in, recursively."""
    env = os.environ if env is None else env
    root = load_yaml(path, env)
    problems: list[Problem] = []
    _include(root, root, env, (str(Path(path).resolve()),), problems)
    if problems:
        raise ConfigError(problems)
    return root


def _include(
    into: Located,
    source: Located,
    env: Mapping[str, str],
    chain: tuple[str, ...],
    problems: list[Problem],
) -> None:
    """Merge the files `source` includes into `into` (`source` is `into` or an included file)."""
    data = source.data
    if not isinstance(data, dict) or "include" not in data:
        return
    entries = data.pop("include")
    if source is into:
        into.lines.pop(("include",), None)
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        problems.append(source.problem(("include",), "must be a list of paths or globs"))
        return
    base = Path(source.file).resolve().parent
    for i, entry in enumerate(entries):
        pattern = entry if Path(entry).is_absolute() else str(base / entry)
        found = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            problems.append(source.problem(("include", i), f"{entry!r} matches no file"))
        for file in found:
            resolved = str(Path(file).resolve())
            if resolved in chain:
                problems.append(source.problem(("include", i), f"{entry!r} includes itself"))
                continue
            try:
                included = load_yaml(file, env)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            _merge(into, included, problems)
            _include(into, included, env, (*chain, resolved), problems)


def _merge(into: Located, included: Located, problems: list[Problem]) -> None:
    data = included.data
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(included.problem((), "an included file must be a mapping"))
        return
    target = into.data if isinstance(into.data, dict) else {}
    into.data = target
    for key, value in data.items():
        if key == "include":
            continue
        if key in INCLUDABLE_LISTS and not isinstance(value, list):
            problems.append(included.problem((key,), "must be a list"))
        elif key in INCLUDABLE_LISTS:
            mine = target.setdefault(key, [])
            if not isinstance(mine, list):
                continue  # the including file's own shape error is reported by validation
            _append(into, included, (key,), (key,), mine, value)
        elif key == "healer" and isinstance(value, dict) and set(value) <= {"rules"}:
            rules = value.get("rules", [])
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                problems.append(included.problem(("healer", "rules"), "must be a list of globs"))
                continue
            base = Path(included.file).resolve().parent
            healer = target.setdefault("healer", {})
            if not isinstance(healer, dict):
                continue
            mine = healer.setdefault("rules", [])
            if not isinstance(mine, list):
                continue
            absolute = [r if Path(r).is_absolute() else str(base / r) for r in rules]
            _append(into, included, ("healer", "rules"), ("healer", "rules"), mine, absolute)
        else:
            problems.append(
                included.problem(
                    (key,),
                    "an included file may hold only include, checks, periodic_tasks and "
                    "healer.rules",
                )
            )


def _append(
    into: Located,
    included: Located,
    at: Path_,
    src: Path_,
    mine: list[Any],
    items: list[Any],
) -> None:
    """Append `items` (found at `src` in `included`) to `mine` (at `at` in `into`), carrying
    every line below each item over to its new index."""
    for j, item in enumerate(items):
        new = (*at, len(mine))
        old = (*src, j)
        mine.append(item)
        into.origins[new] = included.origin_of(old)
        for p, line in included.lines.items():
            if p[: len(old)] == old:
                into.lines[(*new, *p[len(old) :])] = line


def load(model: type[M], path: str | Path, env: Mapping[str, str] | None = None) -> M:
    """Read `path` with its includes, validate it as `model`, then run the model's own
    `loaded_from` if it has one; raises ConfigError listing every located problem."""
    located = load_with_includes(path, env)
    loaded = validate(model, located)
    if isinstance(loaded, CrossChecked):
        loaded.loaded_from(located)
    return loaded
