"""Named SQL blocks from `sql/*.sql`, loaded once.

A block starts with a line `-- name: NAME`; its text runs to the next such line. Queries use
psycopg's `%(param)s` placeholders and are never built by string formatting from input.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str, origin: str = "<sql>") -> dict[str, LiteralString]:
    """Split a file of named blocks; a repeated name is a programming error."""
    out: dict[str, LiteralString] = {}
    matches = list(_NAME.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = m.group(1)
        if name in out:
            raise ValueError(f"{origin}: query {name!r} is defined twice")
        out[name] = text[m.end() : end].strip()
    return out


@cache
def load() -> dict[str, LiteralString]:
    """Every named query of every file in `healer/journal/sql/`."""
    out: dict[str, LiteralString] = {}
    folder = resources.files("healer.journal") / "sql"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse(entry.read_text(encoding="utf-8"), entry.name).items():
                if name in out:
                    raise ValueError(f"{entry.name}: query {name!r} is defined in two files")
                out[name] = sql
    return out


def q(name: str) -> LiteralString:
    """The query named `name`; a KeyError here is a bug in taskmedic, not user input."""
    return load()[name]
