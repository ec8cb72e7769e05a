"""`taskmedic db|actions|rules` on a real journal: what an operator types and reads."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from healer.cli import main
from healer.config import HealerConfig, load_healer_config
from healer.ingest import ingest
from healer.journal import migrate
from healer.journal.ingest_writer import IngestWriter
from healer.journal.pool import open_pool
from healer.rules import load_rules
from healer.webhook import parse_notification
from tests.support.ingest_helpers import (
    config_for,
    payload,
    rows,
    with_alert,
    write_config,
)

APPROVAL = """\
rules:
  - name: restart-worker
    match: {alertname: TaskmedicCeleryWorkerDown}
    approval: true
    params:
      worker: {label: worker, pattern: '^[a-z0-9_.-]+@[a-z0-9_.-]+$'}
    steps:
      - name: restart
        script: {argv: [/usr/bin/systemctl, restart, "celery@{{ params.worker }}"]}
"""


def record(config: HealerConfig, dsn: str, *bodies: dict[str, Any]) -> list[dict[str, Any]]:
    """Post payloads through the real ingest path (no HTTP needed for the CLI's point)."""

    async def run() -> list[dict[str, Any]]:
        await migrate.upgrade(dsn)
        pool = await open_pool(dsn)
        writer = IngestWriter(pool)
        try:
            out = []
            for body in bodies:
                n, raw = parse_notification(json.dumps(body).encode())
                result = await ingest(writer, n, raw, load_rules(config), config.healer)
                out.append(result.as_json())
            return out
        finally:
            await writer.close()
            await pool.close()

    return asyncio.run(run())


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_db_upgrade_creates_the_schema_then_has_nothing_to_do(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, pg_dsn)
    code, out, _ = run_cli(capsys, "db", "upgrade", "--config", str(path))
    assert code == 0
    assert "applied migrations 1" in out
    code, out, _ = run_cli(capsys, "db", "upgrade", "--config", str(path))
    assert code == 0
    assert "current" in out


def test_actions_list_show_approve_cancel_over_the_journal(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path, journal_dsn, rules=APPROVAL)
    cfg = str(tmp_path / "taskmedic.yaml")
    record(config, journal_dsn, payload("grouped_workers_down"))
    code, out, _ = run_cli(capsys, "actions", "list", "--config", cfg)
    assert code == 0
    assert out.count("awaiting_approval") == 3
    assert "TaskmedicCeleryWorkerDown" in out

    code, out, _ = run_cli(capsys, "actions", "list", "--config", cfg, "--json", "--limit", "2")
    listed = json.loads(out)
    assert len(listed["items"]) == 2
    assert listed["next"]
    first = listed["items"][0]

    code, out, _ = run_cli(capsys, "actions", "show", str(first["id"]), "--config", cfg)
    assert code == 0
    assert f"plan sha256 {first['plan_hash']}" in out
    assert '["/usr/bin/systemctl", "restart", "celery@' in out

    code, _, err = run_cli(
        capsys, "actions", "approve", str(first["id"]), "--plan-hash", "f" * 64, "--config", cfg
    )
    assert code == 1
    assert f"is not the hash of action {first['id']}'s plan: review the plan again" in err
    assert "/api/" not in err
    code, out, _ = run_cli(
        capsys,
        "actions",
        "approve",
        str(first["id"]),
        "--plan-hash",
        first["plan_hash"],
        "--config",
        cfg,
        "--by",
        "alice",
    )
    assert code == 0
    assert "approved" in out
    assert rows(
        journal_dsn, "SELECT state, approved_by FROM actions WHERE id = %s", (first["id"],)
    ) == [("pending", "alice")]

    second = listed["items"][1]
    code, out, _ = run_cli(capsys, "actions", "cancel", str(second["id"]), "--config", cfg)
    assert code == 0
    assert "cancelled" in out
    code, _, err = run_cli(capsys, "actions", "cancel", str(second["id"]), "--config", cfg)
    assert code == 1
    assert "nothing left to cancel" in err
    code, _, err = run_cli(capsys, "actions", "show", "424242", "--config", cfg)
    assert code == 1
    assert "no action 424242" in err


def test_actions_on_an_unreachable_journal_exit_2_naming_host_and_port_not_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = "postgresql://taskmedic:hunter2@127.0.0.1:1/journal"
    path = write_config(tmp_path, dsn)
    code, out, err = run_cli(capsys, "actions", "list", "--config", str(path))
    assert code == 2
    assert "journal unavailable (OperationalError): connection failed: " in err
    assert 'connection to server at "127.0.0.1", port 1 failed: Connection refused' in err
    assert "hunter2" not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "upgrade"],
        ["actions", "list"],
        ["actions", "approve", "1", "--plan-hash", "f" * 64],
        ["actions", "log", "1"],
        ["rules", "replay"],
        ["healer"],
    ],
    ids=" ".join,
)
def test_every_journal_command_says_why_the_journal_refused_it(
    argv: list[str], journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's own reason, one line, exit 2, no traceback, the password masked."""
    wrong = make_conninfo(journal_dsn, user="taskmedic_no_such_role", password="hunter2")
    path = write_config(tmp_path, wrong)
    code, out, err = run_cli(capsys, *argv, "--config", str(path))
    assert code == 2
    assert 'FATAL: role "taskmedic_no_such_role" does not exist' in err
    assert err.startswith("taskmedic: journal unavailable"), err
    assert "Traceback" not in err
    assert "hunter2" not in out + err


def test_rules_replay_runs_stored_alerts_through_todays_rules(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recorded without a cooldown, replayed with one: the second firing would be skipped."""
    no_cooldown = """\
rules:
  - name: refresh-tree-status
    match: {alertname: TaskmedicStaleRows}
    steps:
      - {name: s, script: {argv: [/bin/echo, refresh]}}
"""
    config = config_for(tmp_path, journal_dsn, rules=no_cooldown)
    first = payload("firing_stale_rows")
    record(config, journal_dsn, first, first, with_alert(first, startsAt="2024-05-14T09:40:00Z"))
    assert rows(journal_dsn, "SELECT state FROM actions ORDER BY id") == [
        ("pending",),
        ("pending",),
    ]

    (tmp_path / "rules" / "healer.yaml").write_text(
        no_cooldown.replace("    match:", "    cooldown: 1h\n    match:")
    )
    cfg = str(tmp_path / "taskmedic.yaml")
    code, out, _ = run_cli(capsys, "rules", "replay", "--config", cfg, "--since", "1h", "--json")
    assert code == 0
    replayed = json.loads(out)
    assert [r["state"] for o in replayed for r in o["rules"]] == ["pending", "duplicate", "skipped"]
    assert [len(o["recorded"]) for o in replayed] == [1, 0, 1]
    code, out, _ = run_cli(capsys, "rules", "replay", "--config", cfg, "--since", "1h")
    assert "would be skipped: cooldown" in out
    assert "recorded then: refresh-tree-status #" in out
    assert rows(journal_dsn, "SELECT count(*) FROM actions") == [(2,)]  # replay wrote nothing


def test_healer_on_a_port_in_use_names_the_option_that_changes_it(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = write_config(tmp_path, journal_dsn, healer={"listen": f"127.0.0.1:{port}"})
        code, _, err = run_cli(capsys, "healer", "--config", str(path))
        assert code == 2
        assert f"healer.listen: cannot listen on 127.0.0.1:{port}: " in err
        assert "address already in use" in err.lower()
        assert "set healer.listen to a free host:port" in err
        code, _, err = run_cli(
            capsys, "healer", "--config", str(path), "--listen", f"127.0.0.1:{port}"
        )
        assert code == 2
        assert "set --listen to a free host:port" in err


def test_actions_on_a_journal_without_tables_say_to_run_db_upgrade(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database where `db upgrade` never ran (here: a search_path with no tables)."""
    empty = make_conninfo(journal_dsn, options="-c search_path=taskmedic_nothing_here")
    path = write_config(tmp_path, empty)
    code, _, err = run_cli(capsys, "actions", "list", "--config", str(path))
    assert code == 2
    assert (
        "healer.journal: the journal has no taskmedic tables yet: run `taskmedic db upgrade`" in err
    )
    assert "Traceback" not in err


def test_approve_takes_the_hash_prefix_the_console_shows_and_asks_on_a_terminal(
    journal_dsn: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_for(tmp_path, journal_dsn, rules=APPROVAL)
    cfg = str(tmp_path / "taskmedic.yaml")
    record(config, journal_dsn, payload("grouped_workers_down"))
    _, out, _ = run_cli(capsys, "actions", "list", "--config", cfg, "--json")
    first, second = json.loads(out)["items"][:2]

    code, _, err = run_cli(
        capsys, "actions", "approve", str(first["id"]), "--plan-hash", "abc", "--config", cfg
    )
    assert code == 2
    assert "at least its first 12 characters" in err

    # On a terminal the plan is shown and nothing happens without a yes.
    class Terminal(io.StringIO):
        def isatty(self) -> bool:  # a pty is what an operator has; stdin here is not one
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    prefix = first["plan_hash"][:12]
    approve = ("actions", "approve", str(first["id"]), "--plan-hash", prefix, "--config", cfg)
    code, out, _ = run_cli(capsys, *approve)
    assert code == 1
    assert f"plan sha256 {first['plan_hash']}" in out
    assert "1. restart: " in out
    assert "not approved" in out
    state = "SELECT state FROM actions WHERE id = %s"
    assert rows(journal_dsn, state, (first["id"],)) == [("awaiting_approval",)]

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, _ = run_cli(capsys, *approve)
    assert code == 0, out
    assert "approved: pending" in out
    assert rows(journal_dsn, state, (first["id"],)) == [("pending",)]

    code, out, _ = run_cli(
        capsys,
        "actions",
        "approve",
        str(second["id"]),
        "--plan-hash",
        second["plan_hash"][:16],
        "--yes",
        "--config",
        cfg,
    )
    assert code == 0
    events = "SELECT message FROM events WHERE action_id = %s AND kind = 'approved'"
    assert rows(journal_dsn, events, (second["id"],)) == [
        (f"plan {second['plan_hash']} approved by cli",)
    ]


def test_actions_list_keeps_its_columns_in_line_and_shows_whole_seconds(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_name = "restart-the-celery-worker-that-stopped-answering-pings"
    rules = APPROVAL + APPROVAL.split("rules:\n", 1)[1].replace("restart-worker", long_name)
    config = config_for(tmp_path, journal_dsn, rules=rules)
    record(config, journal_dsn, payload("grouped_workers_down"))
    code, out, _ = run_cli(capsys, "actions", "list", "--config", str(tmp_path / "taskmedic.yaml"))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 7
    assert {line.index("TaskmedicCeleryWorkerDown") for line in lines[1:]} == {
        lines[0].index("ALERT")
    }
    starts = {m.start() for line in lines[1:] for m in [re.search(r"\d{4}-\d\d-\d\d ", line)] if m}
    assert starts == {lines[0].index("CREATED")}
    for line in lines[1:]:
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  waiting for approval$", line), line


def test_rules_replay_renders_the_recorded_plan_hash_when_nothing_changed(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The journal keeps a firing alert's zero endsAt as NULL and its times without their
    offsets; replay renders from the alert as received, so an unchanged rule gives the very
    plan hash that was recorded, and an alert that started nothing hashes as `rules test`."""
    from healer.rules.tools import test_alerts
    from healer.webhook import Alert

    rules = """\
rules:
  - name: refresh-tree-status
    match: {alertname: TaskmedicStaleRows}
    steps:
      - {name: s, script: {argv: [/bin/echo, "{{ params.check }}"]}}
    params:
      check: {label: check, pattern: '^[a-z_]+$'}
"""
    config = config_for(tmp_path, journal_dsn, rules=rules)
    offset = with_alert(payload("firing_stale_rows"), startsAt="2024-05-14T11:40:00+02:00")
    workers = payload("grouped_workers_down")  # no rule matches these when they arrive
    record(config, journal_dsn, payload("firing_stale_rows"), offset, workers)
    recorded = [h for (h,) in rows(journal_dsn, "SELECT plan_hash FROM actions ORDER BY id")]
    assert len(recorded) == 2

    (tmp_path / "rules" / "healer.yaml").write_text(
        rules
        + "  - name: note-worker\n"
        + "    match: {alertname: TaskmedicCeleryWorkerDown}\n"
        + "    steps: [{name: n, script: {argv: [/bin/echo, down]}}]\n"
    )
    cfg = str(tmp_path / "taskmedic.yaml")
    code, out, _ = run_cli(capsys, "rules", "replay", "--config", cfg, "--since", "1h", "--json")
    assert code == 0
    replayed = json.loads(out)
    stale = [r for o in replayed for r in o["rules"] if r["rule"] == "refresh-tree-status"]
    assert [r["plan_hash"] for r in stale] == recorded
    assert [o["recorded"][0]["plan_hash"] for o in replayed[:2]] == recorded

    config = load_healer_config(cfg)  # the new rules, as `rules test` loads them
    expected = [
        o.rules[0].plan.hash()
        for o in test_alerts(
            config, load_rules(config), [Alert.model_validate(a) for a in workers["alerts"]]
        )
    ]
    assert [o["rules"][0]["plan_hash"] for o in replayed[2:]] == expected

    code, out, _ = run_cli(capsys, "rules", "replay", "--config", cfg, "--since", "1h")
    assert out.count(f"plan sha256 {recorded[0]} (as recorded in #") == 1
