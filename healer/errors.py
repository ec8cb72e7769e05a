"""The healer's own exception types; like every taskmedic exception, they derive from
`exporter.base.errors.TaskmedicError`."""

from __future__ import annotations

from typing import Any

from exporter.base.errors import TaskmedicError

__all__ = ["BadSignature", "JournalRefused", "JournalUnavailable", "LeaseLost", "StepFailed"]


class JournalUnavailable(TaskmedicError):
    """The journal cannot be reached or written: nothing was recorded; HTTP answers 503.

    `str(self)` names the failure's class only (what an HTTP client is told); `detail` is the
    server's or driver's reason (`FATAL: role "x" does not exist`, a refused host and port)
    with every password masked, for the operator's terminal and log."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail

    def for_operator(self) -> str:
        """What a command prints: what failed, and the reason the server or driver gave."""
        return f"{self}: {self.detail}" if self.detail else str(self)


class JournalRefused(TaskmedicError):
    """The journal answered but refused a write (a constraint, a trigger, a permission, a value
    it cannot hold): retrying would fail the same way. `str(self)` names the error's type."""


class BadSignature(TaskmedicError):
    """A message between healer and agents that is unsigned or not signed with the agents'
    key: it is dropped, never acted on."""


class LeaseLost(TaskmedicError):
    """Another executor took this action over (its attempt token changed): stop writing."""


class StepFailed(TaskmedicError):
    """A step ended without success: `str(self)` is what the journal records as its error,
    `result` what the step did before failing, `exit_code` a script's exit status."""

    def __init__(
        self, message: str, *, result: dict[str, Any] | None = None, exit_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.result = result or {}
        self.exit_code = exit_code
