"""Loading rule files from the configured globs, with every problem as `file:line: message`.

A rule file is `rules: [...]` (see `healer.rules.models.Rule`). Beyond the models, loading checks
what they cannot: regexes compile, templates parse and use only declared `params`, SQL text is
never a template (alert values reach SQL only as bound parameters), rule names are unique
across files, and, given the config, that named databases, Celery apps and checks exist.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from pydantic import ValidationError

from exporter.base.configfile import Located, Path_, load_yaml, validate
from exporter.base.errors import ConfigError, Problem
from healer.config import HealerConfig
from healer.plan import canonical_json
from healer.rules.models import Rule, RulesFile, StepRule
from healer.rules.planning import ENV

# Targets longer than this (bytes of canonical JSON) are kept as their SHA-256.
MAX_TARGET = 1024

__all__ = ["CompiledRule", "RuleSet", "load_rule_files", "load_rules"]


@dataclass(frozen=True)
class CompiledRule:
    """A validated rule plus its compiled matchers and where it was defined."""

    rule: Rule
    file: str
    line: int | None
    match_re: dict[str, re.Pattern[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def matches(self, labels: Mapping[str, str], status: str) -> bool:
        """Equality on `match`, full-string regex on `match_re`, and the rule's `on`."""
        if status != self.rule.on:
            return False
        for name, value in self.rule.match.items():
            if labels.get(name) != value:
                return False
        for name, regex in self.match_re.items():
            if regex.fullmatch(labels.get(name, "")) is None:
                return False
        return True

    def target_of(self, labels: Mapping[str, str]) -> str:
        """What cooldown and the circuit breaker count per: the target labels as sorted JSON.

        Compared with the targets of recorded actions, so always the same text for the same
        labels (canonical_json).
        """
        names = self.rule.target if self.rule.target is not None else sorted(labels)
        text = canonical_json({n: labels.get(n, "") for n in names}, plain_numbers=True)
        raw = text.encode()
        if len(raw) <= MAX_TARGET:
            return text
        # The journal indexes (rule, target): a row of an index holds a few KiB at most, and a
        # label can be as large as the body. The digest still tells targets apart.
        return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[CompiledRule, ...] = ()

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def matching(self, labels: Mapping[str, str], status: str) -> list[CompiledRule]:
        return [r for r in self.rules if r.matches(labels, status)]

    def get(self, name: str) -> CompiledRule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_rules(config: HealerConfig) -> RuleSet:
    """The rules named by `healer.rules` globs (relative to the config file), all checked."""
    files: list[Path] = []
    problems: list[Problem] = []
    for i, pattern in enumerate(config.healer.rules):
        full = pattern if Path(pattern).is_absolute() else str(config.base_dir / pattern)
        found = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not found:
            problems.append(config.problem(("healer", "rules", i), f"{pattern!r} matches no file"))
        files.extend(f for f in found if f not in files)
    if problems:
        raise ConfigError(problems)
    return load_rule_files(files, config)


def load_rule_files(paths: Iterable[str | Path], config: HealerConfig | None = None) -> RuleSet:
    """Load and check rule files; raises ConfigError with every problem in every file."""
    problems: list[Problem] = []
    compiled: list[CompiledRule] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            located = load_yaml(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        try:
            valid = validate(RulesFile, located).rules
            parsed: list[tuple[int, Rule | None]] = list(enumerate(valid))
        except ConfigError as exc:
            # Report the shape problems, and still check every rule that has a valid shape.
            problems.extend(exc.problems)
            parsed = _valid_rules(located)
        for i, rule in parsed:
            if rule is None:
                continue
            where = ("rules", i)
            if rule.name in seen:
                problems.append(
                    located.problem(
                        (*where, "name"),
                        f"rule {rule.name!r} is already defined at {seen[rule.name]}",
                    )
                )
            found = _check_rule(rule, located, where, config)
            problems.extend(found)
            cr = CompiledRule(
                rule,
                located.file,
                located.line_of(where),
                {k: re.compile(v) for k, v in rule.match_re.items() if _compiles(v)},
            )
            seen.setdefault(rule.name, cr.source)
            compiled.append(cr)
    if problems:
        raise ConfigError(problems)
    return RuleSet(tuple(compiled))


def _valid_rules(located: Located) -> list[tuple[int, Rule | None]]:
    data = located.data
    items = data.get("rules") if isinstance(data, dict) else None
    out: list[tuple[int, Rule | None]] = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        try:
            out.append((i, Rule.model_validate(item)))
        except ValidationError:
            out.append((i, None))
    return out


def _compiles(regex: str) -> bool:
    try:
        re.compile(regex)
    except re.error:
        return False
    return True


def _check_rule(
    rule: Rule, located: Located, where: Path_, config: HealerConfig | None
) -> list[Problem]:
    out: list[Problem] = []

    def bad(path: Path_, message: str) -> None:
        out.append(located.problem((*where, *path), message))

    for label, regex in rule.match_re.items():
        try:
            re.compile(regex)
        except re.error as exc:
            bad(("match_re", label), f"invalid regular expression: {exc}")
    for i, step in enumerate(rule.steps):
        for path, template, extra in _templates(step):
            for message in _template_problems(template, set(rule.params), extra):
                bad(("steps", i, *path), message)
        for path, sql in _sql_texts(step):
            if "{{" in sql or "{%" in sql:
                bad(
                    ("steps", i, *path),
                    "SQL text is not a template: pass alert values as %(name)s parameters "
                    "under params",
                )
    if config is not None:
        out.extend(_references(rule, located, where, config))
    return out


# Names a template may use besides params: a repair's http request has the confirmed key.
_NO_EXTRA: frozenset[str] = frozenset()
_KEY = frozenset({"key"})


def _templates(step: StepRule) -> Iterator[tuple[Path_, str, frozenset[str]]]:
    """Every templated string of a step (argv, env, cwd, parameter values, http url, headers
    and body, verify labels), with its path and the names it may use besides params."""
    plain: list[tuple[Path_, str]] = list(_script_templates(step.script, ("script",)))
    if step.sql is not None:
        plain += _walk_strings(step.sql.params, ("sql", "params"))
    if step.celery is not None:
        plain += _walk_strings(step.celery.args, ("celery", "args"))
        plain += _walk_strings(step.celery.kwargs, ("celery", "kwargs"))
    if step.repair is not None:
        plain += _walk_strings(step.repair.params, ("repair", "params"))
        if step.repair.http is not None:
            h = step.repair.http
            yield ("repair", "http", "url"), h.url, _KEY
            for path, text in _walk_strings(h.body, ("repair", "http", "json")):
                yield path, text, _KEY
            plain += _walk_strings(h.headers, ("repair", "http", "headers"))
    if step.http is not None:
        plain.append((("http", "url"), step.http.url))
        plain += _walk_strings(step.http.body, ("http", "json"))
        plain += _walk_strings(step.http.headers, ("http", "headers"))
    if step.verify is not None:
        plain += _walk_strings(step.verify.labels, ("verify", "labels"))
    if step.undo is not None:
        plain += _script_templates(step.undo.script, ("undo", "script"))
        if step.undo.sql is not None:
            plain += _walk_strings(step.undo.sql.params, ("undo", "sql", "params"))
    for path, text in plain:
        yield path, text, _NO_EXTRA


def _script_templates(script: Any, base: Path_) -> Iterator[tuple[Path_, str]]:
    if script is None:
        return
    for k, arg in enumerate(script.argv):
        yield (*base, "argv", k), arg
    for name, value in script.env.items():
        yield (*base, "env", name), value
    if script.cwd is not None:
        yield (*base, "cwd"), script.cwd


def _walk_strings(value: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_strings(v, (*path, str(k)))


def _sql_texts(step: StepRule) -> Iterator[tuple[Path_, str]]:
    if step.sql is not None:
        yield ("sql", "query"), step.sql.query
    if step.repair is not None and step.repair.sql is not None:
        yield ("repair", "sql"), step.repair.sql
    if step.undo is not None and step.undo.sql is not None:
        yield ("undo", "sql", "query"), step.undo.sql.query


_BARE_KEY = re.compile(r"\{\{\s*key\s*\}\}")


def _template_problems(
    source: str, declared: set[str], extra: frozenset[str] = _NO_EXTRA
) -> list[str]:
    """A template may read only `params.NAME` for a declared NAME; nothing else of the alert.
    In a repair's http request `{{ key }}` (bare: it is replaced when each request is sent)
    is the confirmed key."""
    if "{" not in source:
        return []
    try:
        ast = ENV.parse(source)
        rest = ENV.parse(_BARE_KEY.sub("", source)) if "key" in extra else ast
    except TemplateSyntaxError as exc:
        return [f"template syntax error: {exc.message}"]
    problems: list[str] = []
    names = [n for n in ast.find_all(nodes.Name) if n.ctx == "load"]
    for n in names:
        if n.name != "params" and n.name not in extra:
            only = "params.NAME or {{ key }}" if extra else "params.NAME"
            problems.append(f"template uses {n.name!r}: templates may use only {only}")
    if any(n.name == "key" for n in rest.find_all(nodes.Name)):
        problems.append("write the key as {{ key }}, alone between the braces")
    problems += _params_problems(ast, declared, sum(1 for n in names if n.name == "params"))
    return problems


def _params_problems(ast: nodes.Template, declared: set[str], mentions: int) -> list[str]:
    """Every use of `params` reads one declared name, as params.NAME or params["NAME"]."""
    problems: list[str] = []
    used: list[str] = []
    wrapped = 0
    for node in ast.find_all(nodes.Getattr):
        if node.attr.startswith("_"):
            problems.append(f"template reads the private attribute {node.attr!r}")
        if isinstance(node.node, nodes.Name) and node.node.name == "params":
            used.append(node.attr)
            wrapped += 1
    for item in ast.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name == "params":
            wrapped += 1
            if isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
                used.append(item.arg.value)
            else:
                problems.append("params[...] needs a constant name: write params.NAME")
    if wrapped < mentions:
        problems.append("use params.NAME, not params itself")
    problems += [
        f"params.{name} is not declared under the rule's params"
        for name in used
        if name not in declared
    ]
    return problems


def _need_agents(rule: Rule, located: Located, where: Path_, config: HealerConfig) -> list[Problem]:
    """A step on other hosts needs the agents' broker."""
    if config.agents is not None:
        return []
    return [
        located.problem(
            (*where, "steps", i, "on"),
            "this step runs on other hosts: the config needs an agents: section "
            "(the broker its agents serve)",
        )
        for i, step in enumerate(rule.steps)
        if step.on is not None
    ]


def _references(rule: Rule, located: Located, where: Path_, config: HealerConfig) -> list[Problem]:
    """Databases, Celery apps and checks a rule names must exist in the config."""
    out: list[Problem] = []
    databases: set[str] = set()

    def need_db(path: Path_, name: str) -> None:
        if name not in config.databases:
            out.append(
                located.problem(
                    (*where, *path), f"database {name!r} is not defined under databases"
                )
            )

    out += _need_agents(rule, located, where, config)
    for i, step in enumerate(rule.steps):
        if step.sql is not None:
            need_db(("steps", i, "sql", "database"), step.sql.database)
            databases.add(step.sql.database)
        if step.undo is not None and step.undo.sql is not None:
            need_db(("steps", i, "undo", "sql", "database"), step.undo.sql.database)
        if step.celery is not None and step.celery.app not in config.celery:
            out.append(
                located.problem(
                    (*where, "steps", i, "celery", "app"),
                    f"celery app {step.celery.app!r} is not defined under celery",
                )
            )
        if step.repair is not None:
            r = step.repair
            try:
                check_db = config.check(r.check).database
            except KeyError:
                out.append(
                    located.problem(
                        (*where, "steps", i, "repair", "check"),
                        f"check {r.check!r} is not defined under checks",
                    )
                )
                continue
            if r.database is not None:
                need_db(("steps", i, "repair", "database"), r.database)
            if r.sql is not None:
                databases.add(r.database or check_db)
    if rule.transaction == "single" and len(databases) > 1:
        out.append(
            located.problem(
                (*where, "transaction"),
                "transaction: single needs every sql and repair step on one database, "
                f"not {sorted(databases)}",
            )
        )
    return out
