"""What the tests of orphans matched by argument share: Timesketch's "processing" query and
a config checking it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
