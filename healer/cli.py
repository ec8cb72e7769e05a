"""The `taskmedic` command: exporter and healer subcommands under one argparse parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter import cli as exporter_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmedic",
        description="Exporter and healer for Celery-backed job tables.",
    )
    parser.add_argument("--version", action="version", version=f"taskmedic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    exporter_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `taskmedic` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
