"""The TacticalRMM pack end to end, with real processes: a worker `w1@host` started without -E
(as TacticalRMM's celery.service starts it), a real `celery beat`, `taskmedic exporter` and
`taskmedic healer` on a config that includes a copy of rules/tacticalrmm/.

Only the schedule is scaled: in the copy, every periodic task's `expect_every` is divided by
45 (core.tasks.cache_db_fields_task: 3m -> 4s) with an explicit 1 s `grace`; the rules' steps,
timeouts and verify's `within` are the pack's own (the failing case shortens `within` only so
that the test ends soon, and says so).

The healer cannot restart real systemd units here, so its `systemctl` is a stand-in first on
its PATH: for `restart celerybeat.service` it starts the same `celery beat` the test started
(detached, its pid recorded so the test kills it), or, in the failing case, starts nothing and
exits 0 as systemctl does for a unit that dies right after it started. Anything else it
refuses with exit 1. The worker and beat run the tests' Celery app (tests/celery_app.py, with a
stand-in core.tasks.cache_db_fields_task on TacticalRMM's real tables); its app name is not
TacticalRMM's, which nothing on the wire carries: the cluster is `tacticalrmm` in the config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.base.types import parse_duration
from tests.apps import create_pg
from tests.services import (
    ROOT,
    Worker,
    beat_command,
    free_port,
    start_beat,
    start_healer_process,
    start_worker,
    wait_for,
)

PACK = ROOT / "rules" / "tacticalrmm"
TASK = "core.tasks.cache_db_fields_task"
RULE = "tacticalrmm-beat-stopped"
SCALE = 45.0  # 3m -> 4s
GRACE = 1.0
INTERVAL = 1.0  # the exporter's collection interval
TOKEN = "trmm-pack-token-5b1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OVERDUE = "taskmedic_celery_task_overdue"
LABELS = {"cluster": "tacticalrmm", "task": TASK}
WRONG = {"error": True, "warning": True}
RIGHT = {"error": False, "warning": False}
MODIFIED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# The healer's `systemctl`: a Python script whose settings (what to start, where to log) are
# in the JSON file next to it.
STANDIN = '''\
#!{python}
"""systemctl stand-in for the TacticalRMM pack test (it restarts no systemd unit)."""
import json, subprocess, sys

with open({settings!r}, encoding="utf-8") as f:
    cfg = json.load(f)
with open(cfg["calls"], "a", encoding="utf-8") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:] != ["restart", "celerybeat.service"]:
    print("systemctl stand-in: refusing", *sys.argv[1:], file=sys.stderr)
    sys.exit(1)
if cfg["start"]:
    with open(cfg["log"], "ab") as out:
        proc = subprocess.Popen(
            cfg["argv"], env=cfg["env"], cwd=cfg["cwd"], stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    with open(cfg["pids"], "a", encoding="utf-8") as f:
        f.write(f"{{proc.pid}}\\n")
print("restarted celerybeat.service")
'''


# --- the exporter's and the healer's HTTP ----------------------------------------------------


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 URLs built by this test
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def series(url: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample `name` on the exporter's /metrics whose labels include `labels`."""
    status, body = http("GET", url)
    if status != 200:
        return []
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def one(url: str, name: str, **labels: str) -> float | None:
    found = series(url, name, **labels)
    assert len(found) <= 1, found
    return found[0][1] if found else None


# --- TacticalRMM's tables --------------------------------------------------------------------


def trmm_rows(dsn: str) -> list[tuple[str, dict[str, bool], datetime]]:
    with psycopg.connect(dsn) as conn:
        return [
            (str(table), dict(checks), modified)
            for table, checks, modified in conn.execute(
                "SELECT 'client:' || name, failing_checks, modified_time FROM clients_client"
                " UNION ALL SELECT 'site:' || name, failing_checks, modified_time FROM clients_site"
                " ORDER BY 1"
            ).fetchall()
        ]


def set_failing_checks(dsn: str, value: dict[str, bool]) -> None:
    with psycopg.connect(dsn) as conn:
        for table in ("clients_client", "clients_site"):
            conn.execute(
                f"UPDATE {table} SET failing_checks = %s::jsonb",  # table names from this test
                (json.dumps(value),),
            )


def trmm_database(dsn: str) -> None:
    """TacticalRMM's real tables, one client with two sites, their icons wrong."""
    create_pg(dsn, "tacticalrmm")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO clients_client (id, name, block_policy_inheritance, failing_checks,"
            " modified_time) VALUES (1, 'Acme', false, %s::jsonb, %s)",
            (json.dumps(WRONG), MODIFIED),
        )
        conn.execute(
            "INSERT INTO clients_site (name, client_id, block_policy_inheritance,"
            " failing_checks, modified_time) VALUES ('HQ', 1, false, %s::jsonb, %s),"
            " ('Branch', 1, false, %s::jsonb, %s)",
            (json.dumps(WRONG), MODIFIED, json.dumps(WRONG), MODIFIED),
        )


# --- the pack, scaled ------------------------------------------------------------------------


def scaled_every(task: str) -> float:
    """The pack's expect_every of `task`, scaled, in seconds."""
    fragment = yaml.safe_load((PACK / "taskmedic.yaml").read_text())
    (every,) = [
        parse_duration(t["expect_every"]) for t in fragment["periodic_tasks"] if t["task"] == task
    ]
    return every / SCALE


def scaled_pack(dst: Path, *, within: float | None = None) -> dict[str, float]:
    """Copy rules/tacticalrmm to `dst` with every expect_every divided by SCALE and grace
    GRACE; `within` replaces verify's only when given. Returns task -> scaled expect_every."""
    shutil.copytree(PACK, dst)
    fragment = yaml.safe_load((dst / "taskmedic.yaml").read_text())
    every: dict[str, float] = {}
    for task in fragment["periodic_tasks"]:
        task["expect_every"] = every[task["task"]] = parse_duration(task["expect_every"]) / SCALE
        task["grace"] = GRACE
    (dst / "taskmedic.yaml").write_text(yaml.safe_dump(fragment, sort_keys=False))
    if within is not None:
        rules = yaml.safe_load((dst / "healer.yaml").read_text())
        for rule in rules["rules"]:
            for step in rule["steps"]:
                if "verify" in step:
                    step["verify"]["within"] = within
        (dst / "healer.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    return every


# --- the processes ---------------------------------------------------------------------------


@dataclass
class Trmm:
    """One TacticalRMM-like installation under test and the taskmedic processes watching it."""

    tmp: Path
    app_dsn: str
    broker: str
    worker: Worker
    beat: Worker
    exporter_url: str = ""
    healer_url: str = ""
    every: float = 0.0
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def calls(self) -> list[list[str]]:
        path = self.tmp / "systemctl-calls"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def restarted_beat_pids(self) -> list[int]:
        path = self.tmp / "beat.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def logs(self) -> str:
        parts = [("worker", self.worker.log), ("beat", self.beat.log)]
        parts += [(name, log) for name, _, log in self.procs]
        parts.append(("restarted beat", self.tmp / "beat-restarted.log"))
        return "\n".join(
            f"--- {name}\n{log.read_text(errors='replace')[-3000:]}"
            for name, log in parts
            if log.exists()
        )

    def stop(self) -> None:
        for pid in self.restarted_beat_pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for _, proc, _ in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.beat.kill()
        self.worker.stop()

    def metric(self, name: str, **labels: str) -> float | None:
        return one(self.exporter_url, name, **labels)

    def post_alert(self, path: Path) -> dict[str, Any]:
        """The pack's example alert, with a fresh startsAt and fingerprint."""
        body = json.loads(path.read_text())
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for alert in body["alerts"]:
            alert.update(startsAt=now, fingerprint=uuid.uuid4().hex[:16])
        status, reply = http("POST", f"{self.healer_url}/alerts", body, AUTH)
        assert status == 200, reply
        result: dict[str, Any] = json.loads(reply)
        return result

    def final_action(self, timeout: float) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            status, body = http("GET", f"{self.healer_url}/api/actions?rule={RULE}", None, AUTH)
            items = json.loads(body)["items"] if status == 200 else []
            done = [i for i in items if i["state"] in ("succeeded", "failed", "cancelled")]
            return done[0] if done else None

        action = wait_for(final, timeout=timeout, interval=0.25, what="the action to end")
        status, body = http("GET", f"{self.healer_url}/api/actions/{action['id']}", None, AUTH)
        assert status == 200, body
        detail: dict[str, Any] = json.loads(body)
        return detail


def start_taskmedic(trmm: Trmm, journal_dsn: str, *, restarts: bool, within: float | None) -> None:
    """The scaled pack, the systemctl stand-in, `taskmedic exporter` and `taskmedic healer`."""
    tmp = trmm.tmp
    trmm.every = scaled_pack(tmp / "rules" / "tacticalrmm", within=within)[TASK]
    exporter = f"127.0.0.1:{free_port()}"
    config = {
        "include": ["rules/tacticalrmm/taskmedic.yaml"],
        "celery": {
            "tacticalrmm": {"broker": trmm.broker, "backend": trmm.broker, "enable_events": True}
        },
        "exporter": {"listen": exporter, "interval": f"{INTERVAL:g}s"},
        "healer": {
            "journal": {"dsn": journal_dsn},
            "auth": {"bearer_token": TOKEN, "alertmanager_roles": ["post_alerts", "read"]},
            "data_dir": str(tmp / "healer-data"),
        },
    }
    path = tmp / "taskmedic.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    argv, env = beat_command(trmm.broker, tmp, TASK, trmm.every)
    settings = tmp / "systemctl.json"
    settings.write_text(
        json.dumps(
            {
                "start": restarts,
                "argv": argv,
                "env": env,
                "cwd": str(ROOT),
                "log": str(tmp / "beat-restarted.log"),
                "pids": str(tmp / "beat.pids"),
                "calls": str(tmp / "systemctl-calls"),
            }
        )
    )
    settings.chmod(0o600)
    bindir = tmp / "bin"
    bindir.mkdir()
    standin = bindir / "systemctl"
    standin.write_text(STANDIN.format(python=sys.executable, settings=str(settings)))
    standin.chmod(0o755)

    log = tmp / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "healer.cli", "exporter", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
    trmm.procs.append(("exporter", proc, log))
    trmm.exporter_url = f"http://{exporter}/metrics"

    def serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the exporter exited:\n{trmm.logs()}")
        return http("GET", trmm.exporter_url)[0] == 200

    wait_for(serving, timeout=30, interval=0.1, what="the exporter's /metrics")

    log = tmp / "healer.log"
    path_env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    healer, port = start_healer_process(path, log, timeout=60, env=path_env)
    trmm.procs.append(("healer", healer, log))
    trmm.healer_url = f"http://127.0.0.1:{port}"


@pytest.fixture
def trmm(pg_dsn: str, broker_url: str, tmp_path: Path) -> Iterator[Trmm]:
    """TacticalRMM's tables, its worker w1 (no -E) and its beat sending the tree-icon task."""
    trmm_database(pg_dsn)
    worker = start_worker(
        broker_url,
        tmp_path,
        name="w1",
        events=False,
        env={"TASKMEDIC_TEST_TRMM_DSN": pg_dsn},
    )
    try:
        beat = start_beat(broker_url, tmp_path, TASK, scaled_every(TASK))
    except BaseException:
        worker.stop()
        raise
    installation = Trmm(tmp_path, pg_dsn, broker_url, worker, beat)
    try:
        yield installation
    finally:
        installation.stop()


def beat_is_watched_then_killed(trmm: Trmm) -> float:
    """The exporter sees the task on time (events asked of the silent worker), beat is killed,
    and the task flips to overdue within expect_every + grace + one collection interval of its
    last success, never before expect_every + grace. Returns the last success."""
    last_succeeded = "taskmedic_celery_task_last_succeeded_timestamp_seconds"
    wait_for(
        lambda: (trmm.metric(last_succeeded, **LABELS) or 0) > 0,
        timeout=30,
        interval=0.2,
        what=f"a success of {TASK} on the exporter\n{trmm.logs()}",
    )
    assert trmm.metric(OVERDUE, **LABELS) == 0
    assert trmm.metric("taskmedic_celery_task_expected_interval_seconds", **LABELS) == trmm.every
    # TacticalRMM's node name reaches the worker series as w1@<host>.
    assert (
        trmm.metric(
            "taskmedic_celery_worker_up", cluster="tacticalrmm", worker=trmm.worker.hostname
        )
        == 1
    )
    assert trmm.worker.hostname.startswith("w1@")
    assert trmm_rows(trmm.app_dsn)
    assert all(c == RIGHT for _, c, _ in trmm_rows(trmm.app_dsn))

    trmm.beat.kill()
    set_failing_checks(trmm.app_dsn, WRONG)  # the icons go wrong while beat is down
    bound = trmm.every + GRACE + INTERVAL

    def overdue() -> float | None:
        if trmm.metric(OVERDUE, **LABELS) == 1:
            return time.time()
        return None

    flipped = wait_for(overdue, timeout=bound + 10, interval=0.1, what="overdue after beat died")
    last = trmm.metric(last_succeeded, **LABELS)
    assert last is not None
    # The product's promise, from the config's values: overdue no later than expect_every +
    # grace + one collection interval after the last success, and not before expect_every +
    # grace (the exporter judges at scrape time, before this test read its clock).
    assert trmm.every + GRACE <= flipped - last <= bound, (flipped - last, bound)
    return last


def test_a_stopped_beat_is_restarted_verified_by_the_exporter_and_the_icons_refreshed(
    trmm: Trmm, journal_dsn: str
) -> None:
    """Beat dies -> the exporter reads core.tasks.cache_db_fields_task overdue -> the pack's
    alert reaches the healer -> systemctl restart celerybeat.service starts beat again -> the
    exporter reads the task on time -> the tree-icon task sent now rewrites failing_checks on
    TacticalRMM's tables -> the action succeeded, each step with its evidence."""
    start_taskmedic(trmm, journal_dsn, restarts=True, within=None)
    try:
        beat_is_watched_then_killed(trmm)
        assert all(c == WRONG for _, c, _ in trmm_rows(trmm.app_dsn))

        reply = trmm.post_alert(PACK / "alerts" / "beat-stopped.json")
        assert [a["rule"] for a in reply["actions"]] == [RULE], reply
        action = trmm.final_action(timeout=60)
        assert action["state"] == "succeeded", json.dumps(action, indent=1, default=str)
        steps = {s["kind"]: s for s in action["steps"]}
        assert [(s["kind"], s["state"]) for s in action["steps"]] == [
            ("script", "succeeded"),
            ("verify", "succeeded"),
            ("celery", "succeeded"),
        ]

        # The stand-in was asked exactly what the pack says, and started one beat.
        assert trmm.calls == [["restart", "celerybeat.service"]]
        assert steps["script"]["exit_code"] == 0
        assert len(trmm.restarted_beat_pids()) == 1
        # The exporter agreed: the series the pack names read 0.
        verified = steps["verify"]["result"]["verified"]
        assert verified == (
            'taskmedic_celery_task_overdue{cluster="tacticalrmm", '
            'task="core.tasks.cache_db_fields_task"} == 0'
        )
        assert trmm.metric(OVERDUE, **LABELS) == 0
        # The task the celery step sent ran on w1 and set the icons right, moving no timestamp.
        sent = steps["celery"]["result"]
        assert (sent["task"], sent["state"]) == (TASK, "SUCCESS")
        assert f"{TASK}[{sent['task_id']}] succeeded" in trmm.worker.output()
        rows = trmm_rows(trmm.app_dsn)
        assert [name for name, _, _ in rows] == ["client:Acme", "site:Branch", "site:HQ"]
        assert all(checks == RIGHT and modified == MODIFIED for _, checks, modified in rows)
    except AssertionError:
        print(trmm.logs())
        raise


def test_a_restart_that_brings_no_beat_back_fails_the_action_at_verify(
    trmm: Trmm, journal_dsn: str
) -> None:
    """systemctl exits 0 but beat does not come back (a unit that dies as it starts): the
    exporter keeps reading the task overdue, so the action fails at verify with its reason and
    nothing is called fixed. Here verify's `within` is shortened (5m -> 8s) so the test ends
    soon; 8 s is more than the task's scaled expect_every + grace, so a beat that did come
    back would have been seen."""
    within = 8.0
    start_taskmedic(trmm, journal_dsn, restarts=False, within=within)
    try:
        beat_is_watched_then_killed(trmm)
        reply = trmm.post_alert(PACK / "alerts" / "beat-stopped.json")
        assert [a["rule"] for a in reply["actions"]] == [RULE], reply
        action = trmm.final_action(timeout=60)
        assert action["state"] == "failed", json.dumps(action, indent=1, default=str)
        # Nothing after the failed verify ran: the tree-icon task was never sent.
        assert [(s["kind"], s["state"]) for s in action["steps"]] == [
            ("script", "succeeded"),
            ("verify", "failed"),
            ("celery", "skipped"),
        ]
        by_kind = {s["kind"]: s for s in action["steps"]}
        assert trmm.calls == [["restart", "celerybeat.service"]]
        assert trmm.restarted_beat_pids() == []
        error = by_kind["verify"]["error"]
        assert error.startswith(f"not verified within {within:g}s: {OVERDUE}{{"), error
        assert error.endswith("last reading: values [1.0]"), error
        assert by_kind["verify"]["result"]["verified"] is None
        assert "not verified within" in action["reason"]
        # The exporter still says overdue, and the icons are still wrong.
        assert all(c == WRONG for _, c, _ in trmm_rows(trmm.app_dsn))
        assert trmm.metric(OVERDUE, **LABELS) == 1
    except AssertionError:
        print(trmm.logs())
        raise
