"""The shipped rule packs' repair steps against real databases: they change exactly the rows
the example checks confirm."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import Config
from tests.services import ROOT, need_or_skip, reachable

EXAMPLE = ROOT / "deploy" / "taskmedic.example.yaml"


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, **kw)


def taskmedic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-c", "import sys; from healer.cli import main; sys.exit(main())", *args],
        env={**os.environ, **(env or {})},
    )


# --- plain files ----------------------------------------------------------------------------


# --- Prometheus and Alertmanager's own tools ------------------------------------------------


# --- taskmedic's own checks -----------------------------------------------------------------


# --- systemd and Docker ---------------------------------------------------------------------


# --- the packs' SQL on real databases -------------------------------------------------------


def example_check_config(tmp_path: Path, database: str, dsn: str) -> Config:
    """The example config's checks on `database`, pointed at a test database."""
    from exporter.config import load_config

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc = {
        "databases": {database: {"dsn": dsn}},
        "checks": [c for c in doc["checks"] if c["database"] == database],
    }
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def pack_step(pack: str, rule: str) -> dict[str, Any]:
    rules = yaml.safe_load((ROOT / "rules" / "healer" / pack).read_text())["rules"]
    (found,) = [r for r in rules if r["name"] == rule]
    (step,) = found["steps"]
    return dict(step["repair"])


@pytest.mark.mariadb
async def test_ibex_pack_repair_closes_exactly_the_records_the_example_check_confirms(
    tmp_path: Path,
) -> None:
    """On MariaDB, the example's records_without_action check finds the half-written record,
    and the ibex pack's SQL, given those keys as the repair step gives them, writes its
    cancel action and touches nothing else; the check then finds none."""
    import pymysql

    from exporter.checks import run_once

    need_or_skip(reachable("127.0.0.1", 3306), "MariaDB at 127.0.0.1:3306")
    name = f"tm_test_{uuid.uuid4().hex[:12]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"USE `{name}`")
            cur.execute(
                "CREATE TABLE task_record (id BIGINT PRIMARY KEY, created_at DATETIME NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE task_action (id BIGINT PRIMARY KEY, action VARCHAR(32) NOT NULL,"
                " clock BIGINT NOT NULL)"
            )
            cur.execute(
                "INSERT INTO task_record VALUES (1, UTC_TIMESTAMP() - INTERVAL 1 HOUR),"
                " (2, UTC_TIMESTAMP() - INTERVAL 1 HOUR), (3, UTC_TIMESTAMP())"
            )
            cur.execute("INSERT INTO task_action VALUES (1, 'start', UNIX_TIMESTAMP())")
        config = example_check_config(tmp_path, "ibex", f"mysql://root@127.0.0.1:3306/{name}")
        outcome = await run_once(config, "records_without_action", pause=0.1)
        keys = [f.key for f in outcome.findings]
        assert keys == [2]  # record 3 is still within its grace
        step = pack_step("ibex.yaml", "ibex-cancel-records-without-action")
        assert step["check"] == "records_without_action"
        with admin.cursor() as cur:
            cur.execute(step["sql"], {"keys": keys})
            assert cur.rowcount == 1
            cur.execute("SELECT id, action FROM task_action ORDER BY id")
            assert cur.fetchall() == ((1, "start"), (2, "cancel"))
        again = await run_once(config, "records_without_action", pause=0.1)
        assert again.findings == []
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_timesketch_pack_repair_fails_only_given_timelines_still_processing(pg_dsn: str) -> None:
    """On PostgreSQL, the Timesketch pack's SQL marks the confirmed timelines failed with a
    reason, and leaves a timeline that finished meanwhile (or was not confirmed) alone."""
    import psycopg

    step = pack_step("timesketch.yaml", "timesketch-fail-stuck-timelines")
    assert step["check"] == "timelines"
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "CREATE TABLE timeline (id int PRIMARY KEY, status text, status_text text,"
            " celery_task_id text, updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO timeline VALUES (1, 'processing', NULL, 't1', now()),"
            " (2, 'ready', NULL, 't2', now()), (3, 'processing', NULL, 't3', now())"
        )
        cur = conn.execute(step["sql"], {"keys": [1, 2]})
        assert cur.rowcount == 1
        rows = conn.execute("SELECT id, status, status_text FROM timeline ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, "fail"), (2, "ready"), (3, "processing")]
    assert rows[0][2] and "lost" in rows[0][2]
