"""The root of taskmedic's exceptions, and the one for bad configuration.

Every exception taskmedic defines derives from `TaskmedicError`, so a caller can tell
taskmedic's own failures from a bug. `ConfigError` is bad operator input found at start (exit
code 2); each `Problem` in it names its file, line and key, never the offending value.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "TaskmedicError"]


class TaskmedicError(Exception):
    """A failure taskmedic detected and describes; anything else is a bug."""


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


class ConfigError(TaskmedicError):
    """The configuration is invalid; every problem names its file, line and key."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
