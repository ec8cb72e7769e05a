"""The healer's own exception types, on top of `exporter.errors`."""

from __future__ import annotations


class JournalUnavailable(Exception):
    """The journal cannot be reached or written: nothing was recorded; HTTP answers 503."""


class LeaseLost(Exception):
    """Another executor took this action over (its attempt token changed): stop writing."""


class StepFailed(Exception):
    """A step ended without success; the message is what the journal records as its error."""
