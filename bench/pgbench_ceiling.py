"""The journal's physical limit for the ingest benchmark: `pgbench` running, on the same
server and the same journal schema, transactions with the same inserts (and notify) that one
ingested alert commits. No HTTP, no JSON, no Python: what PostgreSQL itself can commit here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"


def available() -> bool:
    return Path(PGBENCH).exists()


def _lit(value: Any) -> str:
    """A SQL string literal (pgbench scripts take no bind parameters for these)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return "'" + text.replace("'", "''") + "'"


def ingest_script(payload: dict[str, Any], plan: dict[str, Any], steps: int, notify: bool) -> str:
    """One transaction per alert: notification, alert, action, its steps, its event row.

    The fingerprint is unique per transaction (the actions_once constraint is checked for
    real). Statements are on one line each: pgbench ends a statement at the newline.
    """
    alert = payload["alerts"][0]
    labels = _lit(alert["labels"])
    lines = [
        "\\set r random(1, 2000000000)",
        "BEGIN;",
        "INSERT INTO notifications (receiver, status, group_key, truncated_alerts, payload) "
        f"VALUES ({_lit(payload['receiver'])}, 'firing', {_lit(payload['groupKey'])}, 0, "
        f"{_lit(payload)}::jsonb);",
        "INSERT INTO alerts (notification_id, status, fingerprint, starts_at, labels, "
        "annotations, generator_url) VALUES (currval('notifications_id_seq'), 'firing', "
        "md5(:client_id || '-' || :r || clock_timestamp()::text), now(), "
        f"{labels}::jsonb, {_lit(alert['annotations'])}::jsonb, {_lit(alert['generatorURL'])});",
        "INSERT INTO actions (rule, fingerprint, starts_at, alert_id, labels, target, state, "
        "plan, plan_hash) SELECT 'bench', a.fingerprint, a.starts_at, a.id, a.labels, '', "
        f"'awaiting_approval', {_lit(plan)}::jsonb, md5(a.fingerprint) "
        "FROM alerts a WHERE a.id = currval('alerts_id_seq');",
    ]
    lines += [
        "INSERT INTO steps (action_id, idx, name, kind) "
        f"VALUES (currval('actions_id_seq'), {i}, 'step {i}', 'script');"
        for i in range(steps)
    ]
    lines.append(
        "INSERT INTO events (action_id, actor, kind, to_state, message) "
        "VALUES (currval('actions_id_seq'), 'ingest', 'created', 'awaiting_approval', 'bench');"
    )
    if notify:
        lines.append("SELECT pg_notify('taskmedic_actions', currval('actions_id_seq')::text);")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def run(dsn: str, script: Path, *, clients: int, seconds: int) -> dict[str, Any]:
    """TPS of `script` with `clients` connections for `seconds` (prepared statements)."""
    proc = subprocess.run(
        [
            PGBENCH,
            "-n",  # no vacuum of pgbench's own tables: there are none
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            "-f",
            str(script),
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    n = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    if not m:
        raise RuntimeError(f"cannot read pgbench's tps from:\n{proc.stdout[-2000:]}")
    return {
        "tps": float(m.group(1)),
        "transactions": int(n.group(1)) if n else None,
        "failed": int(failed.group(1)) if failed else 0,
        "clients": clients,
        "seconds": seconds,
    }
