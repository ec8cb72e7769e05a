"""The `taskmedic` command: exporter and healer subcommands under one argparse parser.

Healer commands: `healer` (serve the webhook), `db upgrade`, `actions list|show|approve|cancel`
(straight on the journal named by the config), `rules check|test|replay`. Exit codes: 0 fine,
1 the journal is unavailable or the action refused, 2 bad config, rules or input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import psycopg

from exporter import cli as exporter_cli
from exporter.base import __version__
from exporter.base.errors import ConfigError
from healer import log_cli
from healer.config import HealerConfig, load_healer_config
from healer.schema import schema_text, write_schemas
from healer.terminal import printable

__all__ = ["build_parser", "main"]


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _say(line: str) -> None:
    """Print one line that may hold text from an alert or a step: control characters escaped."""
    print(printable(line))


def _load(args: argparse.Namespace) -> HealerConfig:
    config = load_healer_config(args.config)
    if getattr(args, "dry_run", False):
        settings = config.healer.model_copy(update={"dry_run": True})
        updated = config.model_copy(update={"healer": settings})
        updated._located, updated._base_dir = config._located, config._base_dir
        config = updated
    return config


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Config and rule problems print as `file:line: message` and exit 2."""

    def run(args: argparse.Namespace) -> int:
        from healer.actions import ActionConflict, ActionNotFound
        from healer.errors import JournalUnavailable

        try:
            return fn(args)
        except ConfigError as exc:
            for p in exc.problems:
                _err(str(p))
            return 2
        except JournalUnavailable as exc:
            _err(f"taskmedic: {exc}")
            return 1
        except ActionNotFound as exc:
            _err(f"taskmedic: no action {exc.args[0]}")
            return 1
        except ActionConflict as exc:
            _err(f"taskmedic: {exc}")
            return 1

    return run


# --- healer, db -----------------------------------------------------------------------------


def _cmd_healer(args: argparse.Namespace) -> int:
    from healer.app import serve

    config = _load(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _serve(serve(config, listen=args.listen))


def _serve(main: Coroutine[Any, Any, int]) -> int:
    """Run a server on uvloop where it is installed (not on Windows), else on asyncio's loop.

    uvloop's event loop spends less of the healer's CPU on each request than asyncio's own,
    which under an alert storm is most of what the healer does besides the journal.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _on_journal(
    args: argparse.Namespace, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[int]]
) -> int:
    from healer.journal.pool import journal_dsn, journal_errors

    config = _load(args)

    async def run() -> int:
        async with journal_dsn(config) as dsn:
            with journal_errors():
                async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=5
                ) as conn:
                    return await body(conn)

    return asyncio.run(run())


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from healer.journal import migrate
    from healer.journal.pool import journal_dsn, journal_errors

    config = _load(args)

    async def run() -> int:
        async with journal_dsn(config) as dsn:
            with journal_errors():
                applied = await migrate.upgrade(dsn)
        if applied:
            print(f"applied migrations {', '.join(str(v) for v in applied)}")
        else:
            print(f"journal schema is current (version {migrate.latest_version()})")
        return 0

    return asyncio.run(run())


# --- actions --------------------------------------------------------------------------------


def _cmd_actions_list(args: argparse.Namespace) -> int:
    from healer.actions import STATES, list_actions
    from healer.api import parse_since

    states = [s for v in args.state or [] for s in v.split(",") if s]
    for s in states:
        if s not in STATES:
            _err(f"taskmedic: state {s!r} is not one of {', '.join(STATES)}")
            return 2
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        _err(f"taskmedic: --since: {exc}")
        return 2

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        items, nxt = await list_actions(
            conn, states=states or None, rule=args.rule, since=since, limit=args.limit
        )
        if args.json:
            print(json.dumps({"items": items, "next": nxt}, indent=2))
            return 0
        _say(f"{'ID':>6}  {'STATE':<17} {'RULE':<28} {'ALERT':<28} {'CREATED':<25} REASON")
        for a in items:
            _say(
                f"{a['id']:>6}  {a['state']:<17} {a['rule']:<28} "
                f"{a['alert']['alertname']:<28} {a['created_at'][:25]:<25} {a['reason']}"
            )
        if nxt:
            _say(f"(more: older actions exist before id {nxt})")
        return 0

    return _on_journal(args, body)


def _cmd_actions_show(args: argparse.Namespace) -> int:
    from healer.actions import get_action
    from healer.plan import Plan
    from healer.rules.tools import describe_step

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        a = await get_action(conn, args.id)
        if args.json:
            print(json.dumps(a, indent=2))
            return 0
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(a["alert"]["labels"].items()))
        _say(f"action {a['id']}  rule {a['rule']}  state {a['state']}")
        if a["reason"]:
            _say(f"  reason: {a['reason']}")
        _say(f"  alert: {{{labels}}} fingerprint {a['alert']['fingerprint']}")
        _say(f"  created {a['created_at']}  started {a['started_at']}  finished {a['finished_at']}")
        if a["state"] == "awaiting_approval":
            _say(f"  approval expires {a['approval_expires_at']}")
        _say(f"  plan sha256 {a['plan_hash']}{'  (dry run)' if a['dry_run'] else ''}")
        plan = Plan.model_validate(a["plan"])
        for i, (step, row) in enumerate(zip(plan.steps, a["steps"], strict=False)):
            outcome = row["state"] + (
                f" exit {row['exit_code']}" if row["exit_code"] is not None else ""
            )
            _say(f"  {i + 1}. {step.name} [{outcome}]: {describe_step(step)}")
            if row["error"]:
                _say(f"     error: {row['error']}")
        _say("  events:")
        for e in a["events"]:
            arrow = f"{e['from_state'] or '-'} -> {e['to_state'] or '-'}"
            _say(f"    {e['at']}  {e['actor']:<10} {e['kind']:<16} {arrow}  {e['message']}")
        return 0

    return _on_journal(args, body)


def _cmd_actions_approve(args: argparse.Namespace) -> int:
    from healer.actions import approve

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        out = await approve(conn, args.id, args.plan_hash, args.by)
        print(f"action {out['id']} approved: {out['state']}")
        return 0

    return _on_journal(args, body)


def _cmd_actions_cancel(args: argparse.Namespace) -> int:
    from healer.actions import cancel

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        out = await cancel(conn, args.id, args.by)
        if out.get("cancel_requested"):
            print(f"action {out['id']} is running: cancel requested, the executor stops it")
        else:
            print(f"action {out['id']} cancelled")
        return 0

    return _on_journal(args, body)


# --- rules ----------------------------------------------------------------------------------


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from healer.rules import load_rule_files

    config = _load(args) if args.config else None
    rules = load_rule_files(args.files, config)
    print(f"{len(rules)} rules OK in {len(args.files)} files")
    return 0


def _cmd_rules_test(args: argparse.Namespace) -> int:
    from healer.rules import load_rules
    from healer.rules.tools import alert_from_labels, format_outcomes, load_alerts, test_alerts

    config = _load(args)
    rules = load_rules(config)
    try:
        if args.alert is not None:
            alerts = load_alerts(Path(args.alert))
        else:
            alerts = [alert_from_labels(args.label, args.annotation, resolved=args.resolved)]
    except (OSError, ValueError) as exc:
        _err(f"taskmedic: {exc}")
        return 2
    outcomes = test_alerts(config, rules, alerts)
    if args.json:
        print(json.dumps([o.as_json() for o in outcomes], indent=2))
    else:
        print(format_outcomes(outcomes))
    return 0


def _cmd_rules_replay(args: argparse.Namespace) -> int:
    from healer.api import parse_since
    from healer.journal import replay as journal_replay
    from healer.rules import load_rules
    from healer.rules.tools import format_outcomes, replay

    config = _load(args)
    rules = load_rules(config)
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        _err(f"taskmedic: --since: {exc}")
        return 2

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        rows = await journal_replay.alerts_since(conn, since)
        outcomes = await replay(conn, config, rules, rows)
        if args.json:
            print(json.dumps([o.as_json() for o in outcomes], indent=2))
        else:
            print(format_outcomes(outcomes))
        return 0

    return _on_journal(args, body)


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.write:
        for path in write_schemas(Path(args.write)):
            print(path)
    else:
        sys.stdout.write(schema_text(args.kind))
    return 0


# --- parser ---------------------------------------------------------------------------------


def _config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="taskmedic.yaml")


def register(sub: Any) -> dict[str, Any]:
    """Add the healer's subcommands; returns their sub-parsers so others can extend them."""
    p = sub.add_parser("healer", help="run the Alertmanager webhook and the executor")
    _config_arg(p)
    p.add_argument("--listen", help="host:port (default: healer.listen, 127.0.0.1:9809)")
    p.add_argument("--dry-run", action="store_true", help="run every rule as a dry run")
    p.set_defaults(func=_guard(_cmd_healer))

    db = sub.add_parser("db", help="the journal's schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = db_sub.add_parser("upgrade", help="create or upgrade the journal schema (safe to race)")
    _config_arg(p)
    p.set_defaults(func=_guard(_cmd_db_upgrade))

    actions = sub.add_parser("actions", help="list, show, approve and cancel actions")
    actions_sub = actions.add_subparsers(dest="actions_command", required=True, metavar="COMMAND")
    p = actions_sub.add_parser("list", help="recent actions, newest first")
    _config_arg(p)
    p.add_argument("--state", action="append", help="filter by state (repeat or comma-separate)")
    p.add_argument("--rule", help="filter by rule name")
    p.add_argument("--since", help="a duration such as 24h, or an RFC 3339 time")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(_cmd_actions_list))
    p = actions_sub.add_parser("show", help="an action: alert, plan, steps and events")
    _config_arg(p)
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(_cmd_actions_show))
    p = actions_sub.add_parser("approve", help="approve the plan you reviewed, by its hash")
    _config_arg(p)
    p.add_argument("id", type=int)
    p.add_argument("--plan-hash", required=True, help="the sha256 shown by `actions show`")
    p.add_argument("--by", default="cli", help="who approves (recorded in the journal)")
    p.set_defaults(func=_guard(_cmd_actions_approve))
    p = actions_sub.add_parser("cancel", help="cancel an action, or stop a running one")
    _config_arg(p)
    p.add_argument("id", type=int)
    p.add_argument("--by", default="cli", help="who cancels (recorded in the journal)")
    p.set_defaults(func=_guard(_cmd_actions_cancel))

    rules = sub.add_parser("rules", help="check, test and replay healer rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    p = rules_sub.add_parser("check", help="validate rule files (file:line errors, exit 2)")
    p.add_argument("files", nargs="+")
    _config_arg(p, required=False)
    p.set_defaults(func=_guard(_cmd_rules_check))
    p = rules_sub.add_parser("test", help="which rules match an alert, and the plan; runs nothing")
    _config_arg(p)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--alert", help="a webhook payload (or one alert) as a JSON file")
    given.add_argument(
        "--label", action="append", metavar="NAME=VALUE", help="the alert's labels (repeat)"
    )
    p.add_argument("--annotation", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--resolved", action="store_true", help="with --label: a resolved alert")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(_cmd_rules_test))
    p = rules_sub.add_parser("replay", help="stored alerts through today's rules; runs nothing")
    _config_arg(p)
    p.add_argument("--since", default="24h", help="a duration such as 24h, or an RFC 3339 time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(_cmd_rules_replay))

    p = sub.add_parser("schema", help="print the JSON Schema of taskmedic.yaml or of rule files")
    p.add_argument("kind", choices=["config", "rules"], nargs="?", default="config")
    p.add_argument("--write", metavar="DIR", help="write both schemas into DIR instead")
    p.set_defaults(func=_guard(_cmd_schema))
    return {"actions": actions_sub, "rules": rules_sub, "db": db_sub}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmedic",
        description="Exporter and healer for Celery-backed job tables.",
    )
    parser.add_argument("--version", action="version", version=f"taskmedic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The whole file, healer section included, is validated by every command that reads it.
    exporter_cli.register(sub, load=load_healer_config)
    subs = register(sub)
    log_cli.register_actions_log(subs["actions"])
    log_cli.register_journal(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `taskmedic` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
