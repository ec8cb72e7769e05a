"""Checking a config's structure without its secrets: `taskmedic config check --structure-only`.

A config written for production names environment variables and secret files that exist only
where it runs (systemd's `$CREDENTIALS_DIRECTORY`, a vault agent's files). To check such a file
anywhere else, validation can run in this mode: a missing variable and every secret file read
as a placeholder, and what was not resolved is recorded so that the command can say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["PLACEHOLDER", "PLACEHOLDER_DSN", "Unresolved", "active", "structure_only"]

PLACEHOLDER = "unresolved"
# What a DSN read from a file stands for: its content (and so its driver) is not known.
PLACEHOLDER_DSN = "postgresql://unresolved@localhost/unresolved"


@dataclass
class Unresolved:
    """What validation took on trust: variables not set and secret files not read."""

    variables: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def note(self, kind: list[str], what: str) -> None:
        if what not in kind:
            kind.append(what)


_ACTIVE: ContextVar[Unresolved | None] = ContextVar("taskmedic_structure_only", default=None)


def active() -> Unresolved | None:
    """The record of the structure-only check under way, or None (secrets are resolved)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def structure_only() -> Iterator[Unresolved]:
    """Validate without secrets inside the block; yields what was left unresolved."""
    record = Unresolved()
    token = _ACTIVE.set(record)
    try:
        yield record
    finally:
        _ACTIVE.reset(token)
