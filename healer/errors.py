"""The healer's own exception types; like every taskmedic exception, they derive from
`exporter.base.errors.TaskmedicError`."""

from __future__ import annotations

from exporter.base.errors import TaskmedicError

__all__ = ["JournalUnavailable", "LeaseLost", "StepFailed"]


class JournalUnavailable(TaskmedicError):
    """The journal cannot be reached or written: nothing was recorded; HTTP answers 503."""


class LeaseLost(TaskmedicError):
    """Another executor took this action over (its attempt token changed): stop writing."""


class StepFailed(TaskmedicError):
    """A step ended without success; the message is what the journal records as its error."""
