"""taskmedic exporter: publishes the truth about job-status tables and Celery to Prometheus."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskmedic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
