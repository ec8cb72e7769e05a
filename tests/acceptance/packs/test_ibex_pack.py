"""The Nightingale/ibex pack (rules/ibex/) end to end, on ibex's real tables.

Real: MariaDB with Nightingale's and ibex's own DDL (tests/apps/nightingale.sql), the journal's
PostgreSQL, `taskmedic check` and a `taskmedic healer` process whose config includes the
pack's own taskmedic.yaml by absolute path, and the pack's example alert.

Stand-in: ibex's HTTP API. ibex is a Go program (github.com/flashcatcloud/ibex, embedded in
Nightingale) that cannot run here, so `IbexApi` serves its `PUT /ibex/v1/task/:id/action` and
does on the same tables what ibex's code does, read from ibex's source:

- src/server/router/router.go (ConfigRouter): the /ibex/v1 group sits behind gin.BasicAuth
  (401 and `WWW-Authenticate: Basic realm="Authorization Required"` without the right pair).
- src/server/router/handler.go (taskAction) and funcs.go (TaskMeta): no task_meta row is 404
  {"err": "no such task meta"}; a body that is not JSON is 400 "json body invalid: ..." (ginx
  BindJSON); no task_action row is 200 {"err": "task already finished, no more action can
  do"}; otherwise the answer is ginx Render.Message of TaskAction.Update: 200 {"err": ""} or
  200 {"err": "<error>"} (src/pkg/aop/recovery.go renders the handler's errors as {"err"}).
- src/models/task_action.go (Update, CancelWaitingHosts, StartTask, KillTask): "action
  invalid" unless start|cancel|kill|pause; task_action gets the action and clock = now (Unix
  seconds), then cancel sets the task's `waiting` rows of task_host_<id % 100> to `cancelled`
  (running hosts go on; task_scheduler and task_host_doing stay). start clears the scheduler;
  kill also cancels the waiting hosts, marks task_host_doing `kill` and running hosts `killing`.

The tasks are seeded as ibex writes them: TaskMeta.Save (src/models/task_meta.go) writes
task_meta, task_scheduler, task_action `start` and every host `waiting` in one transaction; a
scheduler takes the task over (TakeOverTask) and RunWaitingHosts (src/models/task_host.go)
marks a batch `running` with a task_host_doing row; when all hosts are done, CleanDoneTask
(src/models/task_scheduler.go) deletes task_scheduler and task_action.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import yaml
from psycopg import sql

from exporter.base.connections import parse_mysql_dsn
from tests.apps import create_mysql
from tests.services import ROOT, need_or_skip, reachable, start_healer_process, wait_for
from tests.support.ingest_helpers import APPROVER_AUTH, AUTH, auth_config

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(180)]

PACK = ROOT / "rules" / "ibex"
IBEX_USER = "n9e-api"
SCHEDULER = "10.0.0.5:20090"  # the ibex server that took the tasks over

# Task ids in three different task_host_N shards (ibex: task_host_<id % 100>).
UNRECORDED, RECORDED, FINISHED = 1201, 1302, 1403
TASKS = (UNRECORDED, RECORDED, FINISHED)


def host_table(task_id: int) -> str:
    """ibex's tht(): the shard of a task's host rows (src/models/models.go)."""
    return f"task_host_{task_id % 100}"


def mysql(dsn: str) -> pymysql.connections.Connection:
    return pymysql.connect(**parse_mysql_dsn(dsn), autocommit=True)


# --- the stand-in for ibex's API ---------------------------------------------------------------


@dataclass
class IbexApi:
    """ibex's `PUT /ibex/v1/task/:id/action` on the real tables (see the module docstring).

    `finishes_first`: the task finishes (ibex's scheduler runs CleanDoneTask) between the
    healer's confirmation and its request, so ibex answers 200 with an error text."""

    dsn: str
    password: str
    finishes_first: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, answer = api.handle(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="Authorization Required"')
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _credentials(self, header: str | None) -> tuple[str, str] | None:
        if header is None or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user, password

    def handle(self, path: str, authorization: str | None, body: bytes) -> tuple[int, Any]:
        credentials = self._credentials(authorization)
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        self.requests.append(
            {"method": "PUT", "path": path, "credentials": credentials, "json": parsed}
        )
        if credentials != (IBEX_USER, self.password):  # gin.BasicAuth
            return 401, None
        parts = path.split("/")
        if len(parts) != 6 or parts[:4] != ["", "ibex", "v1", "task"] or parts[5] != "action":
            return 404, "404 page not found"
        if not parts[4].isdigit():
            return 400, {"err": f"url param[id] is not a number: {parts[4]}"}
        return self.task_action(int(parts[4]), parsed)

    def task_action(self, task_id: int, form: Any) -> tuple[int, Any]:
        """handler.go taskAction, then models.TaskAction.Update."""
        conn = mysql(self.dsn)
        try:
            with conn.cursor() as cur:
                if not cur.execute("SELECT id FROM task_meta WHERE id = %s", (task_id,)):
                    return 404, {"err": "no such task meta"}
                if not isinstance(form, dict):
                    return 400, {"err": "json body invalid"}
                action = form.get("action", "")
                if self.finishes_first:
                    clean_done_task(cur, task_id)
                if not cur.execute("SELECT id FROM task_action WHERE id = %s", (task_id,)):
                    return 200, {"err": "task already finished, no more action can do"}
                if action not in ("start", "cancel", "kill", "pause"):
                    return 200, {"err": "action invalid"}
                cur.execute(
                    "UPDATE task_action SET action = %s, clock = %s WHERE id = %s",
                    (action, int(time.time()), task_id),
                )
                if action == "start":
                    cur.execute(
                        "UPDATE task_scheduler SET scheduler = '' WHERE id = %s", (task_id,)
                    )
                if action in ("cancel", "kill"):
                    cur.execute(
                        f"UPDATE {host_table(task_id)} SET status = 'cancelled'"
                        " WHERE id = %s AND status = 'waiting'",
                        (task_id,),
                    )
                if action == "kill":
                    conn.begin()
                    cur.execute(
                        "UPDATE task_host_doing SET clock = %s, action = 'kill'"
                        " WHERE id = %s AND action <> 'kill'",
                        (int(time.time()), task_id),
                    )
                    cur.execute(
                        f"UPDATE {host_table(task_id)} SET status = 'killing'"
                        " WHERE id = %s AND status = 'running'",
                        (task_id,),
                    )
                    conn.commit()
                return 200, {"err": ""}
        finally:
            conn.close()


def clean_done_task(cur: Any, task_id: int) -> None:
    """Every host done, ibex's scheduler cleans the task up (CleanDoneTask)."""
    cur.execute(
        f"UPDATE {host_table(task_id)} SET status = 'success' WHERE id = %s",
        (task_id,),
    )
    cur.execute("DELETE FROM task_host_doing WHERE id = %s", (task_id,))
    cur.execute("DELETE FROM task_scheduler WHERE id = %s", (task_id,))
    cur.execute("DELETE FROM task_action WHERE id = %s", (task_id,))


# --- ibex's tables --------------------------------------------------------------------------


def add_task(cur: Any, task_id: int, hosts: list[str], *, running: int, title: str) -> None:
    """A task as ibex writes it (TaskMeta.Save), created an hour ago, taken over by a
    scheduler that started its first `running` hosts (RunWaitingHosts)."""
    cur.execute(
        "INSERT INTO task_meta (id, title, account, batch, tolerance, timeout, script, creator,"
        " created) VALUES (%s, %s, 'root', 1, 0, 300, 'sleep 600', 'root',"
        " CURRENT_TIMESTAMP - INTERVAL 1 HOUR)",
        (task_id, title),
    )
    cur.execute("INSERT INTO task_scheduler (id, scheduler) VALUES (%s, %s)", (task_id, SCHEDULER))
    cur.execute(
        "INSERT INTO task_action (id, action, clock) VALUES (%s, 'start', UNIX_TIMESTAMP() - 3600)",
        (task_id,),
    )
    for i, host in enumerate(hosts):
        status = "running" if i < running else "waiting"
        cur.execute(
            f"INSERT INTO {host_table(task_id)} (id, host, status) VALUES (%s, %s, %s)",
            (task_id, host, status),
        )
        if status == "running":
            cur.execute(
                "INSERT INTO task_host_doing (id, host, clock, action) VALUES (%s, %s,"
                " UNIX_TIMESTAMP() - 3600, 'start')",
                (task_id, host),
            )


def add_record(cur: Any, task_id: int, title: str) -> None:
    """Nightingale's task_record of an ibex task."""
    cur.execute(
        "INSERT INTO task_record (id, group_id, ibex_address, title, account, script, create_at,"
        " create_by) VALUES (%s, 1, 'http://127.0.0.1:10090', %s, 'root', 'sleep 600',"
        " UNIX_TIMESTAMP() - 3600, 'root')",
        (task_id, title),
    )


def seed(dsn: str) -> None:
    """(a) a running task Nightingale never recorded, (b) a running task it recorded,
    (c) a finished task (no task_action: ibex deleted it; no task_record either)."""
    conn = mysql(dsn)
    try:
        with conn.cursor() as cur:
            add_task(cur, UNRECORDED, ["web-1", "web-2", "web-3"], running=1, title="unrecorded")
            add_task(cur, RECORDED, ["db-1", "db-2"], running=1, title="recorded")
            add_record(cur, RECORDED, "recorded")
            add_task(cur, FINISHED, ["app-1", "app-2"], running=0, title="finished")
            clean_done_task(cur, FINISHED)
    finally:
        conn.close()


def snapshot(dsn: str, task_id: int) -> dict[str, Any]:
    """Everything ibex and Nightingale hold of one task."""
    conn = mysql(dsn)
    try:
        with conn.cursor() as cur:
            out: dict[str, Any] = {}
            queries = {
                "meta": "SELECT id, title, created FROM task_meta WHERE id = %s",
                "scheduler": "SELECT id, scheduler FROM task_scheduler WHERE id = %s",
                "action": "SELECT id, action, clock FROM task_action WHERE id = %s",
                "hosts": f"SELECT host, status FROM {host_table(task_id)} WHERE id = %s"
                " ORDER BY ii",
                "doing": "SELECT host, clock, action FROM task_host_doing WHERE id = %s"
                " ORDER BY host",
                "record": "SELECT id, title FROM task_record WHERE id = %s",
            }
            for name, sql in queries.items():
                cur.execute(sql, (task_id,))
                out[name] = cur.fetchall()
            return out
    finally:
        conn.close()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def ibex_dsn() -> Iterator[str]:
    """A fresh MariaDB database with Nightingale's and ibex's tables, dropped afterwards."""
    need_or_skip(reachable("127.0.0.1", 3306), "MariaDB at 127.0.0.1:3306")
    name = f"tm_test_{uuid.uuid4().hex[:12]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        dsn = f"mysql://root@127.0.0.1:3306/{name}"
        create_mysql(dsn, "nightingale")
        seed(dsn)
        yield dsn
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


@dataclass
class Setup:
    config: Path
    ibex: IbexApi
    password: str
    start_healer: Callable[[], Healer]


@dataclass
class Healer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        auth: dict[str, str] = AUTH,
    ) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={**auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def raw(self, path: str) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=AUTH)
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return bytes(resp.read()).decode(errors="replace")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def setup(
    ibex_dsn: str, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    """The stand-in API, the password file, a taskmedic.yaml including the pack, and a way to
    start the healer with the environment the pack reads (IBEX_API, IBEX_API_USER,
    CREDENTIALS_DIRECTORY)."""
    password = f"ibex-pw-{uuid.uuid4().hex}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ibex-api-password").write_text(password + "\n")
    (credentials / "ibex-api-password").chmod(0o600)
    ibex = IbexApi(ibex_dsn, password)
    ibex.start()
    config = tmp_path / "taskmedic.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "include": [str(PACK / "taskmedic.yaml")],
                "databases": {"ibex": {"dsn": ibex_dsn}},
                "healer": {
                    "listen": "127.0.0.1:0",
                    "auth": auth_config(),
                    "journal": {"dsn": pg_dsn},
                    "data_dir": str(tmp_path / "data"),
                },
            },
            sort_keys=False,
        )
    )
    monkeypatch.setenv("IBEX_API", ibex.url)
    monkeypatch.setenv("IBEX_API_USER", IBEX_USER)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    started: list[Healer] = []

    def start_healer() -> Healer:
        log = tmp_path / "healer.log"
        proc, port = start_healer_process(config, log, timeout=60)
        started.append(Healer(proc, port, log))
        return started[-1]

    yield Setup(config, ibex, password, start_healer)
    for h in started:
        if h.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(h.proc.pid, signal.SIGTERM)
            try:
                h.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(h.proc.pid, signal.SIGKILL)
                h.proc.wait(timeout=10)
    ibex.stop()


# --- helpers --------------------------------------------------------------------------------


def taskmedic_check(config: Path) -> dict[str, Any]:
    """`taskmedic check --config F --json` for the pack's orphan check."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "healer.cli", "check", "--config", str(config)),
            *("--check", "ibex_unrecorded_tasks", "--json"),
        ],
        capture_output=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def found_keys(report: dict[str, Any]) -> list[Any]:
    (check,) = report["checks"]
    assert check["ok"], check
    return [f["key"] for f in check["findings"]]


def fresh_alert() -> dict[str, Any]:
    """The pack's example alert, firing now, with a fingerprint of its own."""
    alert: dict[str, Any] = json.loads((PACK / "alerts" / "unrecorded-task.json").read_text())
    alert["alerts"][0]["startsAt"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    alert["alerts"][0]["fingerprint"] = uuid.uuid4().hex[:16]
    return alert


def awaiting_action(healer: Healer) -> dict[str, Any]:
    """Post the alert; return the one action it created, awaiting approval."""
    status, body = healer.request("POST", "/alerts", fresh_alert())
    assert status == 200, body
    (created,) = body["actions"]
    assert created["rule"] == "ibex-cancel-unrecorded-tasks"
    status, action = healer.request("GET", f"/api/actions/{created['id']}")
    assert status == 200, action
    assert action["state"] == "awaiting_approval", action
    return dict(action)


def approve_and_settle(healer: Healer, action: dict[str, Any]) -> dict[str, Any]:
    status, out = healer.request(
        "POST",
        f"/api/actions/{action['id']}/approve",
        {"plan_hash": action["plan_hash"]},
        auth=APPROVER_AUTH,
    )
    assert status == 200, out

    def settled() -> dict[str, Any] | None:
        _, got = healer.request("GET", f"/api/actions/{action['id']}")
        return dict(got) if got["state"] in ("succeeded", "failed", "cancelled") else None

    done: dict[str, Any] = wait_for(
        settled, timeout=60, interval=0.2, what=f"action {action['id']} to finish"
    )
    return done


# --- the tests ------------------------------------------------------------------------------


def test_an_unrecorded_ibex_task_is_found_and_cancelled_through_ibex_api_once_approved(
    setup: Setup, ibex_dsn: str, pg_dsn: str
) -> None:
    """The pack's check finds exactly the running task Nightingale never recorded (not the
    recorded one, not the finished one); its alert makes the healer propose a cancel that
    waits for a person; once approved, ibex's API is asked once, with the basic auth of the
    healer's environment, to cancel that task: ibex marks it cancelled and its waiting hosts
    cancelled, the running host goes on, the other tasks are untouched, and the check finds
    nothing any more."""
    assert found_keys(taskmedic_check(setup.config)) == [UNRECORDED]
    before = {t: snapshot(ibex_dsn, t) for t in TASKS}

    healer = setup.start_healer()
    action = awaiting_action(healer)
    assert [s["name"] for s in action["plan"]["steps"]] == [
        "cancel each unrecorded task through ibex's API"
    ]
    assert setup.ibex.requests == []
    assert {t: snapshot(ibex_dsn, t) for t in TASKS} == before

    started = int(time.time())
    done = approve_and_settle(healer, action)
    assert done["state"] == "succeeded", (done, healer.output()[-3000:])

    assert setup.ibex.requests == [
        {
            "method": "PUT",
            "path": f"/ibex/v1/task/{UNRECORDED}/action",
            "credentials": (IBEX_USER, setup.password),
            "json": {"action": "cancel"},
        }
    ]
    after = {t: snapshot(ibex_dsn, t) for t in TASKS}
    assert after[RECORDED] == before[RECORDED]
    assert after[FINISHED] == before[FINISHED]
    a_before, a_after = before[UNRECORDED], after[UNRECORDED]
    ((task, act, clock),) = a_after["action"]
    assert (task, act) == (UNRECORDED, "cancel")
    assert clock >= started
    assert a_after["hosts"] == (
        (("web-1", "running"), ("web-2", "cancelled"), ("web-3", "cancelled"))
    )
    for unchanged in ("meta", "scheduler", "doing", "record"):
        assert a_after[unchanged] == a_before[unchanged], unchanged

    (step,) = done["steps"]
    assert step["result"]["confirmed_keys"] == [UNRECORDED]
    assert [r["answer"] for r in step["result"]["requests"]] == [{"err": ""}]
    assert found_keys(taskmedic_check(setup.config)) == []


def test_an_ibex_error_text_fails_the_action_naming_it_and_the_password_is_never_shown(
    setup: Setup, ibex_dsn: str, pg_dsn: str
) -> None:
    """ibex answers 200 with an error in "err" (here: the task finished between the healer's
    confirmation and its request): the action fails with a reason naming ibex's error, and
    the API password appears nowhere: not in the healer's log, the journal or the API."""
    setup.ibex.finishes_first = True
    healer = setup.start_healer()
    action = awaiting_action(healer)
    done = approve_and_settle(healer, action)
    assert done["state"] == "failed", done
    assert len(setup.ibex.requests) == 1
    assert setup.ibex.requests[0]["credentials"] == (IBEX_USER, setup.password)
    ibex_error = "task already finished, no more action can do"
    (step,) = done["steps"]
    assert step["state"] == "failed"
    assert ibex_error in step["error"], step
    assert ibex_error in done["reason"], done

    secrets = [
        setup.password,
        base64.b64encode(f"{IBEX_USER}:{setup.password}".encode()).decode(),
    ]
    shown = [
        healer.output(),
        healer.raw(f"/api/actions/{action['id']}"),
        healer.raw("/api/actions"),
        healer.raw(f"/api/actions/{action['id']}/log"),
    ]
    with psycopg.connect(pg_dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        ]
        assert {"actions", "steps", "events", "log_chunks"} <= set(tables)
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            shown.extend(f"{table}: {r[0]}" for r in conn.execute(query).fetchall())
    assert any(ibex_error in text for text in shown)  # the readers do see the error
    for secret in secrets:
        leaked = [text[:200] for text in shown if secret in text]
        assert not leaked, leaked
