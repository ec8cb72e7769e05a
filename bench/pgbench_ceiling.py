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
    """A SQL string literal (pgbench scripts take no bind parameters for these).

    pgbench reads `:name` as one of its variables, even inside a literal: JSON gets a space
    after its own colons, a colon inside a JSON string that is followed by a name character
    is written as the JSON escape \\u003a (the same text once PostgreSQL parses it), and a
    plain string is concatenated around its colons.
    """
    if isinstance(value, str):  # a plain string: its colons are concatenated in
        parts = ["'" + p.replace("'", "''") + "'" for p in value.split(":")]
        return "(" + " || ':' || ".join(parts) + ")" if len(parts) > 1 else parts[0]
    text = json.dumps(value, separators=(", ", ": "))
    text = re.sub(r":(?=[A-Za-z0-9_])", r"\\u003a", text)
    return "'" + text.replace("'", "''") + "'"


def ingest_script(
    payload: dict[str, Any],
    plan: dict[str, Any],
    steps: int,
    notify: bool,
    per_transaction: int = 1,
) -> str:
    """One transaction of `per_transaction` alerts: notification, alert, action, its steps,
    its event row (and notify) for each.

    Every fingerprint is unique (the actions_once constraint is checked for real). Statements
    are on one line each: pgbench ends a statement at the newline.
    """
    alert = payload["alerts"][0]
    labels = _lit(alert["labels"])
    lines = ["\\set r random(1, 4000000000000000000)", "BEGIN;"]
    for k in range(per_transaction):
        fingerprint = f"'bench-' || :client_id || '-' || :r || '-{k}'"
        lines += [
            "INSERT INTO notifications (receiver, status, group_key, truncated_alerts, payload) "
            f"VALUES ({_lit(payload['receiver'])}, 'firing', {_lit(payload['groupKey'])}, 0, "
            f"{_lit(payload)}::jsonb);",
            "INSERT INTO alerts (notification_id, status, fingerprint, starts_at, labels, "
            f"annotations, generator_url) VALUES (currval('notifications_id_seq'), 'firing', "
            f"{fingerprint}, now(), {labels}::jsonb, {_lit(alert['annotations'])}::jsonb, "
            f"{_lit(alert['generatorURL'])});",
            "INSERT INTO actions (rule, fingerprint, starts_at, alert_id, labels, target, state, "
            f"plan, plan_hash) VALUES ('bench', {fingerprint}, now(), currval('alerts_id_seq'), "
            f"{labels}::jsonb, {labels}, 'awaiting_approval', {_lit(plan)}::jsonb, "
            f"md5({fingerprint}));",
        ]
        lines += [
            "INSERT INTO steps (action_id, idx, name, kind) "
            f"VALUES (currval('actions_id_seq'), {i}, 'step {i}', 'script');"
            for i in range(steps)
        ]
        lines.append(
            "INSERT INTO events (action_id, actor, kind, to_state, message) VALUES "
            "(currval('actions_id_seq'), 'ingest', 'created', 'awaiting_approval', 'bench');"
        )
        if notify:
            lines.append("SELECT pg_notify('taskmedic_state', currval('actions_id_seq')::text);")
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
