"""Exporter subcommands of `taskmedic`: `exporter`, `config check`, `check`.

Exit codes: 0 fine (for `check`: no finding), 1 findings (`check`), 2 a config error (every
problem printed as `file:line: path: message` on stderr), a listen address already in use (the
option to change is named) or, for `check`, a check that could not establish the truth. No
DSN password is ever printed: configs are shown through `Config.display()` and errors never
echo values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import yaml

from exporter.base.errors import ConfigError
from exporter.base.structure_only import structure_only
from exporter.base.types import show_durations
from exporter.config import Config, load_config
from exporter.errors import CheckUnknown

__all__ = ["register"]

Loader = Callable[[str], Config]
Verifier = Callable[[Config], None]


def register(sub: Any, load: Loader | None = None, verify: Verifier | None = None) -> None:
    """Add the exporter's subcommands to the top-level parser's subparsers.

    `load` reads and validates the config file (default `exporter.config.load_config`). The
    program that mounts these commands passes the loader of its own model, a subclass of
    `Config`, so that every command validates (and `config check` shows) the whole file.
    `verify` runs the checks its other commands make of a loaded config (rule files, what
    serving needs), raising ConfigError: `config check` runs them all, so that a file it
    calls valid is one that no command refuses.
    """
    loader: Loader = load or load_config

    p: argparse.ArgumentParser = sub.add_parser(
        "exporter", help="run the Prometheus exporter until SIGINT or SIGTERM"
    )
    p.add_argument("--config", required=True, help="taskmedic.yaml")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_guard(loader, _cmd_exporter))

    config = sub.add_parser("config", help="validate the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = config_sub.add_parser(
        "check", help="validate; print the effective config with secrets masked (exit 0 or 2)"
    )
    p.add_argument("--config", required=True, help="taskmedic.yaml")
    p.add_argument(
        "--structure-only",
        action="store_true",
        help="check the structure without the secrets: missing environment variables and "
        "secret files stand in as placeholders, and are listed",
    )
    p.set_defaults(func=_config_check(loader, verify))

    p = sub.add_parser(
        "check",
        help="run the checks once and list every finding (exit 0 none, 1 findings, 2 error)",
    )
    p.add_argument("--config", required=True, help="taskmedic.yaml")
    p.add_argument(
        "--check", action="append", dest="checks", metavar="NAME", help="only this check (repeat)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=_guard(loader, _cmd_check))


def _guard(
    load: Loader, command: Callable[[Config, argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """Load the config, printing every located problem and returning 2 when it is invalid."""

    def run(args: argparse.Namespace) -> int:
        try:
            config = load(args.config)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 2
        return command(config, args)

    return run


def _config_check(load: Loader, verify: Verifier | None) -> Callable[[argparse.Namespace], int]:
    """`config check`: every check any command makes, or only the structure (no secrets)."""

    def run(args: argparse.Namespace) -> int:
        with contextlib.ExitStack() as stack:
            unresolved = stack.enter_context(structure_only()) if args.structure_only else None
            try:
                config = load(args.config)
                if verify is not None:
                    verify(config)
            except ConfigError as exc:
                for problem in exc.problems:
                    print(problem, file=sys.stderr)
                return 2
            shown = show_durations(config, config.display())
        if unresolved is None:
            print(f"# {args.config}: valid")
        else:
            print(f"# {args.config}: structure valid; secrets not checked")
            for name in unresolved.variables:
                print(f"#   environment variable not set: {name}")
            for path in unresolved.files:
                print(f"#   secret file not read: {path}")
        print(yaml.dump(shown, Dumper=_Shown, sort_keys=False, default_flow_style=False), end="")
        return 0

    return run


class _Shown(yaml.SafeDumper):
    """Multi-line strings (a check's SQL) as YAML block literals, as they were written."""


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Shown.add_representer(str, _literal)


def _cmd_exporter(config: Config, args: argparse.Namespace) -> int:
    from exporter.web import serve

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(serve(config))


def _cmd_check(config: Config, args: argparse.Namespace) -> int:
    names = args.checks or [c.name for c in config.checks]
    known = {c.name for c in config.checks}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"taskmedic: no check named {', '.join(unknown)} "
            f"(defined: {', '.join(sorted(known)) or 'none'})",
            file=sys.stderr,
        )
        return 2
    from exporter.checks import run_once

    async def run_all() -> list[dict[str, Any]]:
        async def one(name: str) -> dict[str, Any]:
            spec = config.check(name)
            report: dict[str, Any] = {"check": name, "type": spec.type, "ok": True}
            try:
                outcome = await run_once(config, name)
            except CheckUnknown as exc:
                report.update(ok=False, error=str(exc), findings=[])
                return report
            report["error"] = None
            report["findings"] = [
                {
                    "key": f.key,
                    "task_id": f.task_id,
                    "reason": f.reason,
                    "since": f.since.isoformat() if f.since is not None else None,
                    "age_seconds": _finite(f.age_seconds),
                }
                for f in outcome.findings
            ]
            return report

        return list(await asyncio.gather(*(one(n) for n in names)))

    reports = asyncio.run(run_all())
    total = sum(len(r["findings"]) for r in reports)
    code = 2 if any(not r["ok"] for r in reports) else 1 if total else 0
    if args.json:
        out = {"checks": reports, "findings": total, "exit_code": code}
        print(json.dumps(out, default=_json_default, indent=2))
    else:
        _print_report(reports)
    return code


def _finite(seconds: float) -> float | None:
    """An age for JSON: a stale row whose timestamp is NULL has no age (None, not Infinity)."""
    return round(seconds, 3) if math.isfinite(seconds) else None


def _json_default(value: Any) -> Any:
    """Database keys of other types (UUID, Decimal, dates, bytes) as readable strings."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _print_report(reports: list[dict[str, Any]]) -> None:
    for r in reports:
        head = f"{r['check']} ({r['type']})"
        if not r["ok"]:
            print(f"{head}: cannot tell: {r['error']}")
            continue
        findings = r["findings"]
        print(f"{head}: {len(findings) or 'no'} finding{'' if len(findings) == 1 else 's'}")
        for f in findings:
            parts = []
            if f["reason"]:
                parts.append(f"reason={f['reason']}")
            parts.append(f"key={json.dumps(f['key'], default=_json_default)}")
            if r["type"] == "orphan_tasks":
                parts.append(f"task_id={f['task_id'] or '-'}")
            age = f["age_seconds"]
            parts.append(f"age={age:.0f}s" if age is not None else "age=never-set")
            if f["since"]:
                parts.append(f"since={f['since']}")
            print("  " + "  ".join(parts))
