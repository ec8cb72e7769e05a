"""The base layer both halves of taskmedic share, and nothing else.

`configfile` reads YAML with the line of every key, `types` holds the value types of the
config models (durations, names, listen addresses), `connections` turns a configured database
or Celery cluster into driver arguments, `sessions` runs statements on a user's database, and
`errors` is the root of taskmedic's exceptions. The exporter and the healer both import these
modules; neither copies them. This layer imports nothing from the rest of `exporter`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskmedic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
