"""orphan_tasks matched by argument: the config must say which argument."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.apps import create_pg
from tests.support.exporter_helpers import config_from

# The current status of each timeline is its newest timeline_status row (Timesketch's
# set_status deletes and inserts); "processing" since that row was written.
PROCESSING = """
SELECT t.id, t.id, s.created_at
  FROM timeline t
  JOIN (SELECT DISTINCT ON (parent_id) parent_id, status, created_at
          FROM timeline_status ORDER BY parent_id, id DESC) s ON s.parent_id = t.id
 WHERE s.status = 'processing'
"""
IMPORTS = ["timesketch.lib.tasks.run_plaso", "timesketch.lib.tasks.run_csv_jsonl"]


@pytest.fixture
def timesketch(pg_dsn: str) -> str:
    create_pg(pg_dsn, "timesketch")
    return pg_dsn


def config(tmp_path: Path, dsn: str, broker: str, **match: Any) -> Any:
    return config_from(
        tmp_path,
        {
            "databases": {"timesketch": {"dsn": dsn}},
            "celery": {
                "timesketch": {
                    "broker": broker,
                    "inspect_timeout": "0.5s",
                    "queues": ["celery", "imports"],
                }
            },
            "checks": [
                {
                    "name": "timesketch_imports",
                    "type": "orphan_tasks",
                    "database": "timesketch",
                    "celery": "timesketch",
                    "grace": "2m",
                    "match": {"tasks": IMPORTS, **match},
                    "query": PROCESSING,
                }
            ],
        },
    )


def test_a_match_without_position_or_keyword_is_a_config_error(tmp_path: Path) -> None:
    from exporter.base.errors import ConfigError

    with pytest.raises(ConfigError, match=r"checks\[0\]\.match.*position.*keyword"):
        config(tmp_path, "postgresql://x@127.0.0.1/x", "redis://127.0.0.1:6379/0")
