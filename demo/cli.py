"""`python -m demo fault NAME`: break the running demo from another terminal.

Not a `taskmedic` subcommand: the installed command (healer/cli.py) never imports the demo.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from demo.faults import FAULTS, FaultError, request
from demo.leftovers import StateDirUnsafe
from demo.output import show

__all__ = ["main"]


def _cmd_fault(args: argparse.Namespace) -> int:
    try:
        show(request(args.fault, args.dir))
    except (FaultError, StateDirUnsafe) as exc:
        print(f"python -m demo fault: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_fault(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "fault",
        choices=list(FAULTS),
        metavar="FAULT",
        help="; ".join(f"{k}: {v}" for k, v in FAULTS.items()),
    )
    parser.add_argument("--dir", help="the demo's folder, when several demos are running")
    parser.set_defaults(func=_cmd_fault)


def main(argv: Sequence[str]) -> int:
    """`python -m demo fault NAME [--dir DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m demo")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_fault(sub.add_parser("fault", help="inject a fault into the running demo"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))
