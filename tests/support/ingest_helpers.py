"""Shared pieces of the healer tests: config files, payloads, journal reads."""

from __future__ import annotations

import base64
import copy
import json
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import yaml

from healer.config import HealerConfig, load_healer_config
from healer.journal import migrate

PAYLOADS = Path(__file__).parent / "payloads"
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A person who may approve and cancel (Alertmanager's token may not).
APPROVER, APPROVER_PASSWORD = "alice", "alice-approves-for-tests"
APPROVER_AUTH = {
    "Authorization": "Basic "
    + base64.b64encode(f"{APPROVER}:{APPROVER_PASSWORD}".encode()).decode()
}

RULES = textwrap.dedent(
    """\
    rules:
      - name: refresh-tree-status
        match: {alertname: TaskmedicStaleRows, check: tree_status_cache}
        cooldown: 10m
        steps:
          - name: rebuild cache
            script: {argv: [/bin/echo, rebuilt], timeout: 30s}
      - name: restart-worker
        match: {alertname: TaskmedicCeleryWorkerDown}
        params:
          worker: {label: worker, pattern: '^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$'}
        steps:
          - name: restart
            script: {argv: [/bin/echo, restart, "{{ params.worker }}"], timeout: 30s}
      - name: note-recovery
        on: resolved
        match: {alertname: TaskmedicStaleRows}
        steps:
          - name: note
            script: {argv: [/bin/echo, recovered]}
    """
)


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


def with_alert(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a one-alert payload whose alert has `changes` (labels merged)."""
    out = copy.deepcopy(base)
    alert = out["alerts"][0]
    for k, v in changes.items():
        if k == "labels":
            alert["labels"].update(v)
        else:
            alert[k] = v
    return out


def auth_config(token: str = TOKEN, **more: Any) -> dict[str, Any]:
    """`healer.auth` for tests: Alertmanager's token posts alerts and reads (the tests check
    what happened with it), and `APPROVER` approves and cancels."""
    return {
        "bearer_token": token,
        "alertmanager_roles": ["post_alerts", "read"],
        "users": [{"name": APPROVER, "password": APPROVER_PASSWORD, "roles": ["approve"]}],
        **more,
    }


def write_config(
    tmp_path: Path,
    dsn: str | None,
    *,
    rules: str = RULES,
    healer: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
) -> Path:
    """A taskmedic.yaml plus one rules file next to it; returns the config path."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "healer.yaml").write_text(rules)
    section: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "auth": auth_config(),
        "rules": ["rules/*.yaml"],
        "data_dir": str(tmp_path / "data"),
    }
    if dsn is not None:
        section["journal"] = {"dsn": dsn}
    section.update(healer or {})
    doc: dict[str, Any] = {"healer": section, **(top or {})}
    path = tmp_path / "taskmedic.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def config_for(tmp_path: Path, dsn: str | None, **kw: Any) -> HealerConfig:
    return load_healer_config(write_config(tmp_path, dsn, **kw))


def rows(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def count(dsn: str, table: str) -> int:
    """Rows in a journal table (0 when the schema is not there yet)."""
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
            return 0
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


def journal_counts(dsn: str) -> dict[str, int]:
    return {t: count(dsn, t) for t in ("notifications", "alerts", "actions", "steps", "events")}


async def upgraded(dsn: str) -> str:
    await migrate.upgrade(dsn)
    return dsn
