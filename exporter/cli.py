"""Exporter subcommands of `taskmedic`: `exporter`, `config check`, `check`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the exporter's subcommands to the top-level parser's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser("exporter", help="run the Prometheus exporter")
    p.add_argument("--config", required=True)
    p.set_defaults(func=lambda args: 0)
