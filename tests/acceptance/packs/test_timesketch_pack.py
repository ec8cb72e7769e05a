"""The Timesketch pack end to end, on Timesketch's real tables with real Celery workers and a
real healer process: an import whose worker was killed is failed the way Timesketch's own
worker fails one, after a dry run and an approval; an import still running is never touched.

The import task is a stand-in with the real name and signature of
`timesketch.lib.tasks.run_plaso` (tests/celery_app.py): Timesketch itself, with OpenSearch
and plaso, does not run here. Everything else is what a user runs: the pack's own files,
included by a taskmedic.yaml as the README says, and `taskmedic healer`.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from celery import Celery

from exporter.checks import run_once
from exporter.config import load_config
from tests.apps import create_pg
from tests.celery_app import make_app
from tests.services import ROOT, Worker, start_healer_process, start_worker, wait_for
from tests.support.ingest_helpers import APPROVER_AUTH, auth_config

PACK = ROOT / "rules" / "timesketch"
TOKEN = "timesketch-pack-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
RUNNING, ORPHANED = 1, 2


@pytest.fixture
def timesketch(pg_dsn: str) -> str:
    create_pg(pg_dsn, "timesketch")
    return pg_dsn


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    client = make_app(broker_url)
    yield client
    client.close()


def execute(dsn: str, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def uploaded(dsn: str, timeline_id: int) -> None:
    """An upload as Timesketch's API leaves it: a search index, a timeline and a data source,
    each with a newest status row saying processing, half an hour ago (past the pack's
    grace). Timesketch writes UTC into columns without a time zone."""
    at = "(now() at time zone 'utc') - interval '30 minutes'"
    execute(
        dsn,
        f"INSERT INTO searchindex (id, created_at, updated_at, name, index_name)"
        f" VALUES (%(id)s, {at}, {at}, %(name)s, %(index)s)",
        {"id": timeline_id, "name": f"upload {timeline_id}", "index": uuid.uuid4().hex},
    )
    execute(
        dsn,
        f"INSERT INTO timeline (id, created_at, updated_at, name, searchindex_id)"
        f" VALUES (%(id)s, {at}, {at}, %(name)s, %(id)s)",
        {"id": timeline_id, "name": f"upload {timeline_id}"},
    )
    execute(
        dsn,
        f"INSERT INTO datasource (id, created_at, updated_at, timeline_id, provider,"
        f" file_on_disk, original_filename, data_label)"
        f" VALUES (%(id)s, {at}, {at}, %(id)s, 'WebUpload', '/tmp/x.plaso', 'x.plaso', 'x')",
        {"id": timeline_id},
    )
    for table in ("searchindex_status", "timeline_status", "datasource_status"):
        execute(
            dsn,
            f"INSERT INTO {table} (created_at, updated_at, status, parent_id)"
            f" VALUES ({at}, {at}, 'processing', %(id)s)",
            {"id": timeline_id},
        )


def statuses(dsn: str, timeline_id: int) -> dict[str, str]:
    """The current status of the upload's search index, timeline and data source."""
    out = {}
    for table in ("searchindex_status", "timeline_status", "datasource_status"):
        rows = execute(
            dsn,
            f"SELECT status FROM {table} WHERE parent_id = %(id)s ORDER BY id DESC LIMIT 1",
            {"id": timeline_id},
        )
        out[table.removesuffix("_status")] = rows[0][0] if rows else "new"
    return out


def error_message(dsn: str, timeline_id: int) -> str | None:
    rows = execute(
        dsn, "SELECT error_message FROM datasource WHERE id = %(id)s", {"id": timeline_id}
    )
    return str(rows[0][0]) if rows[0][0] is not None else None


def import_on(app: Celery, tmp_path: Path, timeline_id: int, queue: str) -> str:
    """Send the import as Timesketch's build_index_pipeline does: six positional arguments;
    the stand-in "imports" for ten minutes."""
    plaso = tmp_path / f"upload-{timeline_id}.plaso"
    plaso.write_text("600")
    args = [str(plaso), None, f"upload {timeline_id}", "index", "plaso", timeline_id]
    return str(app.send_task("timesketch.lib.tasks.run_plaso", args=args, queue=queue).id)


def running_on(app: Celery, worker: Worker, task_id: str) -> bool:
    active = app.control.inspect(destination=[worker.hostname], timeout=1).active() or {}
    return any(t["id"] == task_id for tasks in active.values() for t in tasks)


def write_config(
    tmp_path: Path, timesketch: str, broker: str, journal: str, *, dry_run: bool
) -> Path:
    """A user's taskmedic.yaml: the databases and cluster the pack names, and the pack."""
    path = tmp_path / f"taskmedic-{'dry' if dry_run else 'live'}.yaml"
    doc = {
        "include": [str(PACK / "taskmedic.yaml")],
        "databases": {"timesketch": {"dsn": timesketch}, "timesketch_write": {"dsn": timesketch}},
        "celery": {"timesketch": {"broker": broker, "backend": broker, "inspect_timeout": "2s"}},
        "healer": {
            "listen": "127.0.0.1:0",
            "journal": {"dsn": journal},
            "auth": auth_config(TOKEN),
            "data_dir": str(tmp_path / "data"),
            "dry_run": dry_run,
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def fresh_alert() -> bytes:
    """The pack's example alert, firing now (a new firing, not a retry of the example)."""
    body: dict[str, Any] = json.loads((PACK / "alerts" / "orphaned-import.json").read_text())
    body = copy.deepcopy(body)
    now = datetime.now(UTC).isoformat()
    for alert in body["alerts"]:
        alert["startsAt"] = now
        alert["fingerprint"] = uuid.uuid4().hex[:16]
    return json.dumps(body).encode()


class HealerApi:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def call(
        self, method: str, path: str, body: bytes | None = None, auth: dict[str, str] = AUTH
    ) -> tuple[int, Any]:
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            self.url + path, data=body, method=method, headers={**AUTH, **auth}
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def action_in(self, action_id: int, *states: str, timeout: float = 60) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            _, found["action"] = self.call("GET", f"/api/actions/{action_id}")
            return bool(found["action"]["state"] in states)

        wait_for(reached, timeout=timeout, what=f"action {action_id} to become {states}")
        action: dict[str, Any] = found["action"]
        return action

    def post_and_approve(self) -> dict[str, Any]:
        """Post the alert; the pack's rule waits for a person; approve the plan shown."""
        status, answer = self.call("POST", "/alerts", fresh_alert())
        assert status == 200, answer
        _, listed = self.call("GET", "/api/actions?limit=1")
        (action,) = listed["items"]
        assert action["rule"] == "timesketch-fail-orphaned-imports"
        waiting = self.action_in(action["id"], "awaiting_approval")
        status, answer = self.call(
            "POST",
            f"/api/actions/{action['id']}/approve",
            json.dumps({"plan_hash": waiting["plan_hash"]}).encode(),
            auth=APPROVER_AUTH,
        )
        assert status == 200, answer
        return self.action_in(action["id"], "succeeded", "failed", "skipped", timeout=90)


def healer(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], HealerApi]:
    proc, port = start_healer_process(config, log, timeout=60)
    return proc, HealerApi(port)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def test_an_import_whose_worker_was_killed_is_failed_after_dry_run_and_approval(
    timesketch: str,
    broker_url: str,
    app: Celery,
    workers: list[Worker],
    journal_dsn: str,
    tmp_path: Path,
) -> None:
    uploaded(timesketch, RUNNING)
    uploaded(timesketch, ORPHANED)
    keeps = start_worker(broker_url, tmp_path, name="keeps", queues="imports_a", events=False)
    dies = start_worker(broker_url, tmp_path, name="dies", queues="imports_b", events=False)
    workers += [keeps, dies]
    running = import_on(app, tmp_path, RUNNING, "imports_a")
    doomed = import_on(app, tmp_path, ORPHANED, "imports_b")
    wait_for(lambda: running_on(app, keeps, running), timeout=30, what="import 1 running")
    wait_for(lambda: running_on(app, dies, doomed), timeout=30, what="import 2 running")
    dies.kill()  # kill -9: the import dies with its worker, the rows still say processing

    # The finding: only the import whose worker died; the running one however old it is.
    dry = write_config(tmp_path, timesketch, broker_url, journal_dsn, dry_run=True)
    outcome = await run_once(load_config(dry), "timesketch_imports", pause=0.5)
    assert [f.key for f in outcome.findings] == [ORPHANED]

    # A dry run first: the plan is approved and rolled back, reporting what it would do.
    proc, api = healer(dry, tmp_path / "healer-dry.log")
    try:
        action = api.post_and_approve()
    finally:
        stop(proc)
    assert action["state"] == "skipped", action
    (step,) = action["steps"]
    assert step["result"]["confirmed_keys"] == [ORPHANED]
    assert step["result"]["transaction"] == "rolled_back"
    assert statuses(timesketch, ORPHANED)["timeline"] == "processing"
    assert error_message(timesketch, ORPHANED) is None

    # Then for real, after a person approves the same plan.
    live = write_config(tmp_path, timesketch, broker_url, journal_dsn, dry_run=False)
    proc, api = healer(live, tmp_path / "healer-live.log")
    try:
        action = api.post_and_approve()
    finally:
        stop(proc)
    assert action["state"] == "succeeded", action
    (step,) = action["steps"]
    assert step["result"]["changed_keys"] == [ORPHANED]
    assert step["result"]["database"] == "timesketch_write"

    # Failed the way Timesketch fails an import: status rows replaced, the reason on the
    # data source; the search index never became ready, so it fails too.
    assert statuses(timesketch, ORPHANED) == {
        "searchindex": "fail",
        "timeline": "fail",
        "datasource": "fail",
    }
    reason = error_message(timesketch, ORPHANED)
    assert reason is not None
    assert "worker killed or task gone" in reason
    counts = execute(
        timesketch,
        "SELECT count(*) FROM timeline_status WHERE parent_id = %(id)s",
        {"id": ORPHANED},
    )
    assert counts == [(1,)]  # set_status semantics: one current row, not a history
    # The running import: untouched, and still running.
    assert statuses(timesketch, RUNNING) == {
        "searchindex": "processing",
        "timeline": "processing",
        "datasource": "processing",
    }
    assert error_message(timesketch, RUNNING) is None
    assert running_on(app, keeps, running)
    again = await run_once(load_config(live), "timesketch_imports", pause=0.5)
    assert again.findings == []
