"""`taskmedic actions log ID [-f]` and `taskmedic journal prune`: the log in a terminal.

Both work straight on the journal the config names, like the other `actions` commands. The log
is written stdout to stdout, stderr and system notes to stderr, as UTF-8 text whose control
characters (ANSI escapes, carriage returns, bidi overrides; not newlines and tabs) are shown as
escapes, so a step's output cannot rewrite the terminal, and each line a host run printed starts
with `[host] ` (`--host NAME` keeps only that host's); `--raw` writes the bytes exactly as the
step wrote them, with no prefix. `-f` follows the log through the same hub as the web console
until the action ends.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import psycopg

from exporter.base.errors import ConfigError
from exporter.base.types import parse_duration
from healer.errors import JournalUnavailable
from healer.journal.logs import Chunk
from healer.terminal import printable

__all__ = ["register_actions_log", "register_journal"]

Body = Callable[[str], Awaitable[int]]


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _run(args: argparse.Namespace, body: Body) -> int:
    """Load the config, reach its journal, run `body(dsn)`; errors become exit codes."""
    from healer.config import load_healer_config
    from healer.journal.pool import journal_dsn, journal_errors, journal_secrets

    try:
        config = load_healer_config(args.config)
    except ConfigError as exc:
        for p in exc.problems:
            _err(str(p))
        return 2
    args.loaded_config = config

    async def run() -> int:
        with journal_errors(secrets=journal_secrets(config)):
            async with journal_dsn(config) as dsn:
                # One connection first: a pool only retries, and would report a timeout
                # instead of the server's reason.
                await (await psycopg.AsyncConnection.connect(dsn, connect_timeout=5)).close()
                return await body(dsn)

    try:
        return asyncio.run(run())
    except JournalUnavailable as exc:
        _err(f"taskmedic: {exc.for_operator()}")
        return 2
    except KeyboardInterrupt:
        return 130


def _out(stream: str) -> BinaryIO:
    return sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer


class _Writer:
    """Writes log chunks to the terminal: escaped (one UTF-8 decoder per step, host and
    stream, so a character split between chunks stays whole), a host run's lines starting with
    `[host] `; or, `raw`, the bytes as they are."""

    def __init__(self, raw: bool) -> None:
        from healer.log_api import LinePrefixer

        self.raw = raw
        self._decoders: dict[tuple[int, str, str], codecs.IncrementalDecoder] = {}
        self._tags = LinePrefixer()

    def write(self, c: Chunk) -> None:
        out = _out(c.stream)
        if self.raw:
            out.write(c.data)
        else:
            key = (c.step, c.host, c.stream)
            decoder = self._decoders.get(key)
            if decoder is None:
                decoder = self._decoders[key] = codecs.getincrementaldecoder("utf-8")(
                    "backslashreplace"
                )
            # Escaped before the prefix is added: a host name is ours, its output is not.
            text = printable(decoder.decode(c.data), multiline=True)
            out.write(self._tags.prefix(c, text).encode())
        out.flush()


def _step_number(text: str) -> int:
    """`--step N`: a step as numbered everywhere people read one, from 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step number") from None
    if n < 1:
        raise argparse.ArgumentTypeError("steps are numbered from 1 (the first step is 1)")
    return n


def _cmd_log(args: argparse.Namespace) -> int:
    from healer.actions import ActionNotFound
    from healer.journal import logs
    from healer.journal.pool import open_pool
    from healer.log_api import LogFilter, iter_log_text
    from healer.log_hub import End, LogHub

    # People number steps from 1, as the console and every reason do; the journal from 0.
    flt = LogFilter(args.stream, args.step - 1 if args.step is not None else None, args.host)
    writer = _Writer(args.raw)

    async def body(dsn: str) -> int:
        pool = await open_pool(dsn, max_size=2)
        try:
            if not args.follow:
                async with pool.connection() as conn:
                    if await logs.action_state(conn, args.id) is None:
                        _err(f"taskmedic: no action {args.id}")
                        return 1
                async for c in iter_log_text(pool, args.id, flt):
                    writer.write(c)
                return 0
            hub = LogHub(dsn, pool)
            try:
                async with contextlib.aclosing(hub.follow(args.id)) as items:
                    async for item in items:
                        if isinstance(item, End):
                            sys.stdout.flush()
                            _err(f"[action {args.id} {item.state}]")
                            return 0
                        assert isinstance(item, Chunk)
                        if flt.keeps(item):
                            writer.write(item)
            except ActionNotFound:
                _err(f"taskmedic: no action {args.id}")
                return 1
            finally:
                await hub.stop()
            return 0
        finally:
            await pool.close()

    return _run(args, body)


def _cmd_prune(args: argparse.Namespace) -> int:
    from healer.retention import prune_logs, retention_of

    async def body(dsn: str) -> int:
        older_than = args.older_than
        if older_than is None:
            older_than = retention_of(args.loaded_config)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            report = await prune_logs(conn, older_than, dry_run=args.dry_run)
        print(report.summary())
        return 0

    return _run(args, body)


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register_actions_log(actions_sub: Any) -> None:
    """Add `log` to the `taskmedic actions` subcommands."""
    p: argparse.ArgumentParser = actions_sub.add_parser(
        "log", help="an action's output; -f follows it live until the action ends"
    )
    p.add_argument("--config", required=True, help="taskmedic.yaml")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--stream", choices=("stdout", "stderr", "system"))
    p.add_argument("--step", type=_step_number, help="only this step (1 is the first)")
    p.add_argument("--host", help="only the output of this host's runs")
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the output's bytes exactly as the step wrote them, control characters "
        "included (by default they are shown escaped, e.g. \\x1b)",
    )
    p.set_defaults(func=_cmd_log)


def register_journal(sub: Any) -> None:
    """Add `taskmedic journal prune`."""
    journal = sub.add_parser("journal", help="journal maintenance")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True, metavar="COMMAND")
    p: argparse.ArgumentParser = journal_sub.add_parser(
        "prune", help="delete log chunks older than the retention; everything else stays"
    )
    p.add_argument("--config", required=True, help="taskmedic.yaml")
    p.add_argument(
        "--older-than",
        type=_duration,
        help="a duration such as 30d (default: healer.log_retention, 30d)",
    )
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.set_defaults(func=_cmd_prune)
