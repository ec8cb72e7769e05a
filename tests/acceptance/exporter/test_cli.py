"""The `taskmedic` command as an operator runs it (a real subprocess): located config errors
with exit code 2 and no password in sight, `config check`, `check` and its exit codes, and
`exporter` stopping cleanly on a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import ROOT, free_port, wait_for
from tests.support.exporter_helpers import parse_metrics, pg_exec, value

DB_SECRET = "cli-secret-4417"
BROKER_SECRET = "broker-secret-99"
SECRETS = (DB_SECRET, BROKER_SECRET)


def taskmedic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healer.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
        check=False,
    )


BASE = f"""\
databases:
  app:
    dsn: "postgresql://app:{DB_SECRET}@127.0.0.1:5432/app"
celery:
  main:
    broker: "redis://:{BROKER_SECRET}@127.0.0.1:6379/0"
    queues: [celery]
exporter:
  listen: "127.0.0.1:9808"
  interval: 15s
checks:
  - name: tree_status_cache
    type: stale_status
    database: app
    max_age: 10m
    query: "SELECT agent_id, updated_at FROM agents_status_cache"
  - name: timelines
    type: orphan_tasks
    database: app
    celery: main
    grace: 2m
    query: "SELECT id, celery_task_id, updated_at FROM timeline"
"""

# (case, text replaced, its replacement, expected "path: message" on the replaced line)
ERRORS = [
    ("unknown key", "    grace: 2m", "    gracee: 2m", "checks[1].gracee: unknown key"),
    (
        "wrong type",
        "    queues: [celery]",
        "    queues: celery",
        "celery.main.queues: Input should be a valid list",
    ),
    (
        "undefined database",
        "    database: app\n    max_age",
        "    database: reports\n    max_age",
        "checks[0].database: database 'reports' is not defined under databases",
    ),
    (
        "undefined celery cluster",
        "    celery: main",
        "    celery: beta",
        "checks[1].celery: celery cluster 'beta' is not defined",
    ),
    (
        "missing env var",
        f'    dsn: "postgresql://app:{DB_SECRET}@127.0.0.1:5432/app"',
        '    dsn: "${TASKMEDIC_TEST_UNSET_DSN}"',
        "databases.app.dsn: environment variable TASKMEDIC_TEST_UNSET_DSN is not set",
    ),
    (
        "bad duration",
        "    max_age: 10m",
        "    max_age: 10 minutes",
        "checks[0].max_age: expected a duration such as 30s, 10m or 1h",
    ),
    (
        "unreadable dsn_file",
        f'    dsn: "postgresql://app:{DB_SECRET}@127.0.0.1:5432/app"',
        "    dsn_file: /nonexistent/taskmedic/app-dsn",
        "databases.app.dsn_file: cannot read dsn_file /nonexistent/taskmedic/app-dsn: "
        "No such file or directory",
    ),
    (
        "bad dsn scheme",
        f'    dsn: "postgresql://app:{DB_SECRET}@127.0.0.1:5432/app"',
        f'    dsn: "oracle://app:{DB_SECRET}@127.0.0.1/app"',
        "databases.app.dsn: dsn must start with postgresql://",
    ),
]


def broken_config(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    line = text[: text.index(new)].count("\n") + 1
    path = tmp_path / "taskmedic.yaml"
    path.write_text(text)
    return path, line


@pytest.mark.parametrize(("case", "old", "new", "expected"), ERRORS, ids=[e[0] for e in ERRORS])
def test_each_config_error_is_located_and_exits_2_without_a_secret(
    tmp_path: Path, case: str, old: str, new: str, expected: str
) -> None:
    """`taskmedic config check` names file, line, key and problem on stderr, exits 2, and the
    DSN and broker passwords appear nowhere."""
    path, line = broken_config(tmp_path, old, new)
    out = taskmedic("config", "check", "--config", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert any(ln.startswith(f"{path}:{line}: {expected}") for ln in lines), out.stderr
    assert out.stdout == ""
    for secret in SECRETS:
        assert secret not in out.stdout + out.stderr


@pytest.mark.parametrize("command", [["exporter"], ["check"], ["check", "--json"]])
def test_every_command_refuses_a_broken_config_with_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    """The exporter and `check` validate up front too: same located message, exit 2."""
    path, line = broken_config(tmp_path, "    celery: main", "    celery: beta")
    out = taskmedic(*command, "--config", str(path))
    assert out.returncode == 2
    assert f"{path}:{line}: checks[1].celery: celery cluster 'beta' is not defined" in out.stderr
    for secret in SECRETS:
        assert secret not in out.stdout + out.stderr


def test_config_check_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("file-secret-123\n")
    text = BASE.replace(
        "    queues: [celery]",
        f'    queues: [celery]\n    backend: "redis://:{BROKER_SECRET}@h:6379/1"',
    )
    text = text.replace(
        f'    dsn: "postgresql://app:{DB_SECRET}@127.0.0.1:5432/app"',
        f'    dsn: "postgresql://app:{DB_SECRET}@127.0.0.1:5432/app"\n'
        f"    password_file: {secret_file}",
    )
    path = tmp_path / "taskmedic.yaml"
    path.write_text(text)
    out = taskmedic("config", "check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["databases"]["app"]["dsn"] == "postgresql://app:***@127.0.0.1:5432/app"
    assert shown["celery"]["main"]["broker"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["checks"][0]["interval"] == "15s"  # effective values, not null
    assert shown["checks"][1]["grace"] == "2m"
    for secret in (*SECRETS, "file-secret-123"):
        assert secret not in out.stdout + out.stderr


# --- taskmedic check ------------------------------------------------------------------------


def check_config(tmp_path: Path, dsn: str, broker: str, **queries: str) -> Path:
    data: dict[str, Any] = {
        "databases": {"app": {"dsn": dsn}},
        "celery": {"main": {"broker": broker, "backend": broker, "inspect_timeout": "0.5s"}},
        "checks": [
            {
                "name": "cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": queries.get("cache", "SELECT agent_id, updated_at FROM cache"),
            },
            {
                "name": "timelines",
                "type": "orphan_tasks",
                "database": "app",
                "celery": "main",
                "grace": "1m",
                "query": "SELECT id, celery_task_id, updated_at FROM timeline "
                "WHERE status = 'processing'",
            },
        ],
    }
    path = tmp_path / "taskmedic.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def app_tables(pg_dsn: str) -> str:
    pg_exec(pg_dsn, "CREATE TABLE cache (agent_id int, updated_at timestamptz)")
    pg_exec(pg_dsn, "INSERT INTO cache VALUES (1, now())")
    pg_exec(
        pg_dsn,
        "CREATE TABLE timeline (id int, status text, celery_task_id text, updated_at timestamptz)",
    )
    return pg_dsn


def test_check_exits_0_with_no_finding(app_tables: str, broker_url: str, tmp_path: Path) -> None:
    out = taskmedic(
        "check", "--config", str(check_config(tmp_path, app_tables, broker_url)), "--json"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["findings"] == 0
    assert {c["check"]: c["ok"] for c in report["checks"]} == {"cache": True, "timelines": True}


def test_check_lists_every_finding_with_key_and_task_id_and_exits_1(
    app_tables: str, broker_url: str, tmp_path: Path
) -> None:
    """The report an operator reads before repairing: each row key (as the database's own
    type) and task id, in JSON and as text."""
    pg_exec(app_tables, "INSERT INTO cache VALUES (2, now() - interval '1 hour')")
    pg_exec(
        app_tables,
        "INSERT INTO timeline VALUES (41, 'processing', 'never-sent-1', now() - interval '1 hour'),"
        " (42, 'processing', 'never-sent-2', now() - interval '2 hours'),"
        " (43, 'processing', 'young', now())",
    )
    config = check_config(tmp_path, app_tables, broker_url)
    out = taskmedic("check", "--config", str(config), "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["findings"] == 3
    by_check = {c["check"]: c for c in report["checks"]}
    assert [(f["key"], f["task_id"], f["reason"]) for f in by_check["timelines"]["findings"]] == [
        (42, "never-sent-2", "lost"),
        (41, "never-sent-1", "lost"),
    ]
    stale = by_check["cache"]["findings"]
    assert [f["key"] for f in stale] == [2]
    assert 3600 <= stale[0]["age_seconds"] < 3700

    out = taskmedic("check", "--config", str(config), "--check", "timelines")
    assert out.returncode == 1
    assert "timelines (orphan_tasks): 2 findings" in out.stdout
    assert "reason=lost  key=42  task_id=never-sent-2" in out.stdout
    assert "cache" not in out.stdout


def test_check_exits_2_when_a_check_cannot_tell(
    app_tables: str, broker_url: str, tmp_path: Path
) -> None:
    """A failing query is an error (exit 2) even when another check has findings; its message
    is in the report. An unknown --check name is an error too."""
    pg_exec(
        app_tables,
        "INSERT INTO timeline VALUES (1, 'processing', 'never-sent', now() - interval '1 hour')",
    )
    config = check_config(tmp_path, app_tables, broker_url, cache="SELECT 1, 2 FROM missing")
    out = taskmedic("check", "--config", str(config), "--json")
    assert out.returncode == 2, out.stdout + out.stderr
    report = json.loads(out.stdout)
    cache = next(c for c in report["checks"] if c["check"] == "cache")
    assert cache["ok"] is False
    assert 'relation "missing" does not exist' in cache["error"]
    assert report["findings"] == 1

    out = taskmedic("check", "--config", str(config), "--check", "nope")
    assert out.returncode == 2
    assert "no check named nope" in out.stderr


def test_check_with_the_broker_unreachable_exits_2(app_tables: str, tmp_path: Path) -> None:
    pg_exec(
        app_tables,
        "INSERT INTO timeline VALUES (1, 'processing', 'never-sent', now() - interval '1 hour')",
    )
    broker = f"redis://:{BROKER_SECRET}@127.0.0.1:{free_port()}/0"
    out = taskmedic(
        "check", "--config", str(check_config(tmp_path, app_tables, broker)), "--check", "timelines"
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "timelines (orphan_tasks): cannot tell" in out.stdout
    assert BROKER_SECRET not in out.stdout + out.stderr


# --- taskmedic exporter ---------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_exporter_serves_until_a_signal_and_exits_0(
    app_tables: str, broker_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    path = check_config(tmp_path, app_tables, broker_url)
    data = yaml.safe_load(path.read_text())
    data["exporter"] = {"listen": f"127.0.0.1:{port}", "interval": "1s"}
    path.write_text(yaml.safe_dump(data))
    log = tmp_path / "exporter.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "healer.cli", "exporter", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
    try:

        def scraped() -> dict[Any, float] | None:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    m = parse_metrics(r.read().decode())
            except OSError:
                return None
            return m if value(m, "taskmedic_check_up", check="cache") == 1 else None

        m = wait_for(scraped, timeout=20, what="the exporter to serve its first collection")
        assert value(m, "taskmedic_stale_rows", check="cache") == 0
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def test_exporter_that_cannot_listen_names_the_option_and_exits_2(
    app_tables: str, broker_url: str, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = check_config(tmp_path, app_tables, broker_url)
        data = yaml.safe_load(path.read_text())
        data["exporter"] = {"listen": f"127.0.0.1:{port}"}
        path.write_text(yaml.safe_dump(data))
        out = taskmedic("exporter", "--config", str(path))
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: " in out.stderr
    assert "address already in use" in out.stderr
    assert "set exporter.listen in the config to a free host:port" in out.stderr
