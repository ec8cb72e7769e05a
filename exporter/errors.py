"""The exporter's own exception: a check that could not learn the truth.

`CheckUnknown` means a check could not establish the truth this time (database, broker or
query failed): its finding is not exported and `taskmedic_check_up` is 0. Configuration
errors are the base layer's (`exporter.base.errors.ConfigError`).
"""

from __future__ import annotations

from exporter.base.errors import TaskmedicError

__all__ = ["CheckUnknown"]


class CheckUnknown(TaskmedicError):
    """A check could not establish the truth (unreachable, timed out, query failed)."""
