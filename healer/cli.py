"""The `taskmedic` command: exporter and healer subcommands under one argparse parser.

Healer commands: `healer` (serve the webhook), `db upgrade`, `actions list|show|approve|cancel`
(straight on the journal named by the config), `rules check|test|replay`. Exit codes: 0 fine,
1 the action refused (not found, wrong state or plan hash), 2 what the operator must fix
before anything can work: a bad config, rules or input, an unreachable journal (the reason
printed, passwords masked), a listen address in use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
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
            _err(f"taskmedic: {exc.for_operator()}")
            return 2
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


def _cmd_agent(args: argparse.Namespace) -> int:
    from healer.agents.settings import is_host_name
    from healer.agents.worker import run_agent

    config = _load(args)
    if config.agents is None:
        raise ConfigError(
            [config.problem(("agents",), "`taskmedic agent` needs an agents: section (broker)")]
        )
    bad = [q for q in args.queue if not is_host_name(q)]
    if bad:
        _err(f"taskmedic: --queue {bad[0]!r} is not a host name (letters, digits, _ . : -)")
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_agent(config.agents, args.queue)


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
    from healer.journal.pool import journal_dsn, journal_errors, journal_secrets

    config = _load(args)

    async def run() -> int:
        with journal_errors(secrets=journal_secrets(config)):
            async with (
                journal_dsn(config) as dsn,
                await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=5
                ) as conn,
            ):
                try:
                    return await body(conn)
                except psycopg.errors.UndefinedTable:
                    raise _no_schema(config) from None

    return asyncio.run(run())


def _no_schema(config: HealerConfig) -> ConfigError:
    """A journal database without taskmedic's tables: what to run, not a traceback."""
    return ConfigError(
        [
            config.problem(
                ("healer", "journal"),
                "the journal has no taskmedic tables yet: run `taskmedic db upgrade` with this "
                "config (the healer also creates them when it starts)",
            )
        ]
    )


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from healer.journal import migrate
    from healer.journal.pool import journal_dsn, journal_errors, journal_secrets

    config = _load(args)

    async def run() -> int:
        with journal_errors(secrets=journal_secrets(config)):
            async with journal_dsn(config) as dsn:
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
        # The HOSTS column shows only when some action ran steps on other hosts.
        hosts = any(a["hosts"] for a in items)
        table = [
            [
                "ID",
                "STATE",
                "RULE",
                "ALERT",
                "CREATED (UTC)",
                *(["HOSTS"] if hosts else []),
                "REASON",
            ]
        ] + [
            [
                str(a["id"]),
                a["state"],
                printable(a["rule"]),
                printable(a["alert"]["alertname"]),
                _utc_seconds(a["created_at"]),
                *([_host_counts(a["hosts"])] if hosts else []),
                a["reason"],
            ]
            for a in items
        ]
        for line in _columns(table):
            _say(line)
        if nxt:
            _say(f"(more: older actions exist before id {nxt})")
        return 0

    return _on_journal(args, body)


def _host_counts(counts: dict[str, int] | None) -> str:
    """`hosts 3/4 ok` (`, 1 failed` when some failed): an action's runs on other hosts."""
    if not counts:
        return ""
    text = f"hosts {counts['succeeded']}/{counts['total']} ok"
    return text + (f", {counts['failed']} failed" if counts["failed"] else "")


def _host_run_lines(runs: list[dict[str, Any]]) -> list[str]:
    """A step's host runs, one line each: host, state, exit code, seconds, agent, error."""
    rows = [["HOST", "STATE", "EXIT", "SECONDS", "AGENT", "ERROR"]]
    for r in runs:
        what = r["state"] if r["purpose"] == "step" else f"{r['purpose']} {r['state']}"
        if r["attempt"] and r["attempt"] > 1:
            what += f" (attempt {r['attempt']})"
        rows.append(
            [
                printable(r["host"]),
                what,
                "-" if r["exit_code"] is None else str(r["exit_code"]),
                "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                printable(r["agent"] or "-"),
                printable(r["error"] or ""),
            ]
        )
    # _columns right-aligns the first column: start every line with an empty one instead.
    return _columns([["", *r] for r in rows])


def _pause_line(a: dict[str, Any]) -> str:
    if a["resumed_by"]:
        return f"  paused {a['paused_at']}, resumed by {a['resumed_by']}"
    return (
        f"  paused {a['paused_at']} between batches of hosts: "
        f"`taskmedic actions resume {a['id']}` runs the next batch"
    )


def _utc_seconds(iso: str) -> str:
    """`2024-05-01T12:00:00.123456+00:00` -> `2024-05-01 12:00:00`: whole seconds, in UTC."""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _columns(rows: list[list[str]]) -> list[str]:
    """Rows as aligned columns, each as wide as its widest cell (the first right-aligned,
    the last left as it is): a long rule name widens its column, never shifts the others."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        cells = [r[0].rjust(widths[0])] + [
            c.ljust(w) for c, w in zip(r[1:-1], widths[1:], strict=True)
        ]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return out


def _cmd_actions_show(args: argparse.Namespace) -> int:
    from healer.actions import get_action
    from healer.plan import Plan
    from healer.rules.tools import step_lines

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
            for line in step_lines(f"  {i + 1}. {step.name} [{outcome}]: ", step):
                _say(line)
            if row["error"]:
                _say(f"     error: {row['error']}")
            if row.get("hosts"):
                for line in _host_run_lines(row["hosts"]):
                    _say(f"    {line}")
        if a["paused_at"]:
            _say(_pause_line(a))
        _say("  events:")
        for e in a["events"]:
            arrow = f"{e['from_state'] or '-'} -> {e['to_state'] or '-'}"
            _say(f"    {e['at']}  {e['actor']:<10} {e['kind']:<16} {arrow}  {e['message']}")
        return 0

    return _on_journal(args, body)


PLAN_HASH_PREFIX = 12  # what the console shows next to a plan


def _cmd_actions_approve(args: argparse.Namespace) -> int:
    from healer.actions import approve, get_action
    from healer.plan import Plan
    from healer.rules.tools import step_lines

    given = args.plan_hash.strip().lower()
    if len(given) < PLAN_HASH_PREFIX or not re.fullmatch(r"[0-9a-f]+", given):
        _err(
            f"taskmedic: --plan-hash: give the plan's sha256 as `taskmedic actions show "
            f"{args.id}` or the console prints it, or at least its first {PLAN_HASH_PREFIX} "
            "characters"
        )
        return 2

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        a = await get_action(conn, args.id)
        full: str = a["plan_hash"]
        if not full.startswith(given):
            _err(
                f"taskmedic: {given[:PLAN_HASH_PREFIX]}… is not the hash of action "
                f"{args.id}'s plan: review the plan again (`taskmedic actions show {args.id}`) "
                "and approve the hash shown there"
            )
            return 1
        if not args.yes and sys.stdin.isatty():
            plan = Plan.model_validate(a["plan"])
            _say(f"action {a['id']}  rule {a['rule']}  plan sha256 {full}")
            for i, step in enumerate(plan.steps, 1):
                for line in step_lines(f"  {i}. {step.name}: ", step):
                    _say(line)
            n = len(plan.steps)
            answer = await asyncio.to_thread(
                input, f"Approve and run {'this step' if n == 1 else f'these {n} steps'}? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("not approved")
                return 1
        out = await approve(conn, args.id, full, args.by)
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


def _cmd_actions_resume(args: argparse.Namespace) -> int:
    from healer.actions import resume

    async def body(conn: psycopg.AsyncConnection[Any]) -> int:
        out = await resume(conn, args.id, args.by)
        print(f"action {out['id']} resumed: its next batch of hosts starts")
        return 0

    return _on_journal(args, body)


# --- rules ----------------------------------------------------------------------------------


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from healer.rules import load_rule_files

    config = _load(args) if args.config else None
    rules = load_rule_files(args.files, config)
    print(f"{len(rules)} rules OK in {len(args.files)} files")
    if config is None:
        print(
            "not verified without --config: that the databases, Celery apps and checks the "
            "rules name are defined (give --config taskmedic.yaml, or run `taskmedic config "
            "check`)"
        )
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


def _verify(config: Any) -> None:
    """What `healer` checks of its config before serving, for `config check`: the rule files
    (with every database, Celery app and check they name) and the auth settings. A file with
    no `healer:` section configures the exporter alone: nothing of the healer's is checked."""
    from healer.config import check_serving_auth
    from healer.rules import load_rules

    if "healer" not in config.model_fields_set:
        return
    problems = []
    for verify in (load_rules, check_serving_auth):
        try:
            verify(config)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)


def _config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="taskmedic.yaml")


def register(sub: Any) -> dict[str, Any]:
    """Add the healer's subcommands; returns their sub-parsers so others can extend them."""
    p = sub.add_parser("healer", help="run the Alertmanager webhook and the executor")
    _config_arg(p)
    p.add_argument("--listen", help="host:port (default: healer.listen, 127.0.0.1:9809)")
    p.add_argument("--dry-run", action="store_true", help="run every rule as a dry run")
    p.set_defaults(func=_guard(_cmd_healer))

    p = sub.add_parser("agent", help="run steps sent to this host's queues (a Celery worker)")
    _config_arg(p)
    p.add_argument(
        "--queue",
        action="append",
        required=True,
        metavar="NAME",
        help="the host whose steps to run: consumes agents.queue_prefix + NAME (repeat)",
    )
    p.set_defaults(func=_guard(_cmd_agent))

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
    p.add_argument(
        "--plan-hash",
        required=True,
        help=f"the sha256 shown by `actions show` (or its first {PLAN_HASH_PREFIX} characters, "
        "as the console shows it)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")
    p.add_argument("--by", default="cli", help="who approves (recorded in the journal)")
    p.set_defaults(func=_guard(_cmd_actions_approve))
    p = actions_sub.add_parser("cancel", help="cancel an action, or stop a running one")
    _config_arg(p)
    p.add_argument("id", type=int)
    p.add_argument("--by", default="cli", help="who cancels (recorded in the journal)")
    p.set_defaults(func=_guard(_cmd_actions_cancel))
    p = actions_sub.add_parser("resume", help="resume a step paused after a batch of hosts")
    _config_arg(p)
    p.add_argument("id", type=int)
    p.add_argument("--by", default="cli", help="who resumes (recorded in the journal)")
    p.set_defaults(func=_guard(_cmd_actions_resume))

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
    exporter_cli.register(sub, load=load_healer_config, verify=_verify)
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
