"""The few exception types of taskmedic.

`ConfigError` is bad operator input found at start (exit code 2). `CheckUnknown` means a check
could not learn the truth this time (database, broker or query failed): its finding is not
exported and `taskmedic_check_up` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in a config or rules file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; every problem names its file, line and key."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class CheckUnknown(Exception):
    """A check could not establish the truth (unreachable, timed out, query failed)."""
