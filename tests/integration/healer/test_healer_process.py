"""Labels never run: an injection attempt through alert labels creates no file and runs
nothing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from healer.app import create_app
from tests.support.ingest_helpers import (
    AUTH,
    PAYLOADS,
    config_for,
    rows,
)

RECORD_LABELS = """\
rules:
  - name: restart-worker
    match: {{alertname: TaskmedicCeleryWorkerDown}}
    params:
      worker: {{label: worker, pattern: '^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$'}}
    steps:
      - name: restart
        script: {{argv: [/bin/echo, restart, "{{{{ params.worker }}}}"]}}
  - name: record-labels
    match: {{alertname: TaskmedicCeleryWorkerDown}}
    steps:
      - name: record
        script:
          argv:
            - "{python}"
            - -c
            - |
              import json, os, sys
              alert = json.load(sys.stdin)
              path = os.path.join(sys.argv[1], alert["fingerprint"] + ".txt")
              with open(path, "w") as f:
                  f.write(os.environ["TASKMEDIC_LABEL_WORKER"] + "\\n" + alert["labels"]["worker"])
            - "{out}"
"""


async def test_injection_through_labels_creates_no_file_and_runs_nothing(
    journal_dsn: str, aiohttp_client: Any, tmp_path: Path
) -> None:
    """Shell metacharacters in labels: the templated rule refuses; env and stdin stay inert."""
    seen = tmp_path / "seen"
    seen.mkdir()
    config = config_for(
        tmp_path, journal_dsn, rules=RECORD_LABELS.format(python=sys.executable, out=seen)
    )
    client = await aiohttp_client(create_app(config, dsn=journal_dsn))
    text = (PAYLOADS / "injection_workers_down.json").read_text()
    body = json.loads(text.replace("@MARKDIR@", str(tmp_path)))
    resp = await client.post("/alerts", json=body, headers=AUTH)
    assert resp.status == 200

    async def settled() -> list[tuple[Any, ...]]:
        for _ in range(300):
            got = rows(journal_dsn, "SELECT rule, state FROM actions ORDER BY rule, id")
            if all(s in ("succeeded", "failed") for _, s in got):
                return got
            await asyncio.sleep(0.1)
        raise AssertionError(f"actions did not settle: {got}")

    got = await settled()
    assert got == [("record-labels", "succeeded")] * 3 + [("restart-worker", "failed")] * 3
    assert rows(
        journal_dsn,
        "SELECT count(*) FROM steps WHERE action_id IN "
        "(SELECT id FROM actions WHERE rule = 'restart-worker')",
    ) == [(0,)]
    assert not list(tmp_path.glob("pwned_*"))
    for alert in body["alerts"]:
        label = alert["labels"]["worker"]
        recorded = (seen / f"{alert['fingerprint']}.txt").read_text()
        assert recorded == f"{label}\n{label}"  # the literal text, never interpreted
