"""taskmedic exporter: publishes the truth about job-status tables and Celery to Prometheus."""

from exporter.base import __version__

__all__ = ["__version__"]
