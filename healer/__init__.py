"""taskmedic healer: an Alertmanager webhook that runs declared remediation with a journal."""

from exporter.base import __version__

__all__ = ["__version__"]
