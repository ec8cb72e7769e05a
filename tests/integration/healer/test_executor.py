"""The executor runs stored plans step by step and the journal says exactly what happened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healer.metrics import HealerMetrics
from tests.support.journal_helpers import (
    StartExecutor,
    action,
    events,
    fetch,
    insert_action,
    output,
    plan,
    script,
    sh,
    state_in,
    steps,
)


async def test_steps_run_in_order_and_the_action_succeeds(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """Each step runs after the previous one; the journal records every outcome and event."""
    log = tmp_path / "log"
    metrics = HealerMetrics()
    await executors(metrics=metrics)
    p = plan(*(sh(f"step {i}", f"echo {i} >> {log}; echo out {i}") for i in range(3)))
    action_id = await insert_action(journal_dsn, p)

    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "succeeded", row["reason"]
    assert row["reason"] == "3 steps succeeded"
    assert row["attempt"] == 1
    assert row["lease_expires_at"] is None
    assert log.read_text().split() == ["0", "1", "2"]
    rows = await steps(journal_dsn, action_id)
    assert [(s["state"], s["exit_code"]) for s in rows] == [("succeeded", 0)] * 3
    assert all(s["started_at"] <= s["finished_at"] for s in rows)
    assert rows[0]["finished_at"] <= rows[1]["started_at"] <= rows[2]["started_at"]
    assert await output(journal_dsn, action_id, "stdout", step=2) == b"out 2\n"
    transitions = [(e["from_state"], e["to_state"]) for e in await events(journal_dsn, action_id)]
    assert transitions[-2:] == [("pending", "running"), ("running", "succeeded")]
    sample = metrics.registry.get_sample_value(
        "taskmedic_actions_total", {"rule": "test-rule", "outcome": "succeeded"}
    )
    assert sample == 1.0
    assert (
        metrics.registry.get_sample_value(
            "taskmedic_action_duration_seconds_count", {"rule": "test-rule"}
        )
        == 1.0
    )


async def test_a_script_gets_the_alert_on_stdin_and_a_minimal_environment(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No secret of the healer's environment reaches a script; the alert arrives as JSON."""
    monkeypatch.setenv("TASKMEDIC_SECRET_TOKEN", "hunter2")
    await executors()
    p = plan(
        sh("env", f"env > {tmp_path}/env; cat > {tmp_path}/stdin", env={"EXTRA": "1"}),
        alert={"labels": {"alertname": "X", "check": "a; rm -rf /"}},
    )
    action_id = await insert_action(journal_dsn, p)
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert (row["state"], row["reason"]) == ("succeeded", "1 step succeeded")
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    assert "TASKMEDIC_SECRET_TOKEN" not in env
    assert set(env) - {"PWD", "SHLVL", "_"} == {"PATH", "LANG", "HOME", "EXTRA"}
    assert json.loads((tmp_path / "stdin").read_text())["labels"]["check"] == "a; rm -rf /"


async def test_a_failing_step_undoes_completed_steps_in_reverse_order(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """Undo runs newest first; the journal says which steps were undone, which never ran, why."""
    log = tmp_path / "log"
    await executors()
    p = plan(
        sh("first", f"echo do0 >> {log}", undo=["sh", "-c", f"echo undo0 >> {log}"]),
        sh("no undo", f"echo do1 >> {log}"),
        sh("second", f"echo do2 >> {log}", undo=["sh", "-c", f"echo undo2 >> {log}"]),
        sh("breaks", "echo broken >&2; exit 3"),
        sh("never", f"echo never >> {log}"),
    )
    action_id = await insert_action(journal_dsn, p)

    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    assert "step 4 'breaks' failed: exit code 3" in row["reason"]
    assert "undone: steps 3, 1" in row["reason"]
    assert log.read_text().split() == ["do0", "do1", "do2", "undo2", "undo0"]
    rows = await steps(journal_dsn, action_id)
    assert [s["state"] for s in rows] == ["undone", "succeeded", "undone", "failed", "skipped"]
    assert rows[3]["exit_code"] == 3
    assert rows[3]["error"] == "exit code 3"
    assert rows[4]["error"] == "not run: step 4 failed"
    assert rows[0]["result"]["undo"]["by"] == "script"
    assert "step 4 'breaks' failed" in rows[0]["result"]["undo"]["why"]
    assert rows[2]["undo_started_at"] < rows[0]["undo_started_at"]
    assert await output(journal_dsn, action_id, "stderr", step=3) == b"broken\n"
    system = (await output(journal_dsn, action_id, "system", step=0)).decode()
    assert "undo of step 1 'first'" in system


async def test_an_undo_that_fails_is_recorded_and_the_others_still_run(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """undo_failed carries the undo's error; earlier steps are undone anyway."""
    log = tmp_path / "log"
    await executors()
    p = plan(
        sh("first", "true", undo=["sh", "-c", f"echo undo0 >> {log}"]),
        sh("second", "true", undo=["sh", "-c", "exit 7"]),
        sh("breaks", "exit 1"),
    )
    action_id = await insert_action(journal_dsn, p)
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert "undo failed: steps 2" in row["reason"]
    assert "undone: steps 1" in row["reason"]
    rows = await steps(journal_dsn, action_id)
    assert [s["state"] for s in rows] == ["undone", "undo_failed", "failed"]
    assert rows[1]["undo_error"] == "exit code 7"
    assert log.read_text() == "undo0\n"


async def test_a_script_that_cannot_start_fails_its_step_with_the_reason(
    journal_dsn: str, executors: StartExecutor
) -> None:
    await executors()
    p = plan(sh("ok", "true"), script("missing", ["/nonexistent/taskmedic-tool"]))
    action_id = await insert_action(journal_dsn, p)
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    rows = await steps(journal_dsn, action_id)
    assert rows[1]["state"] == "failed"
    assert "cannot start '/nonexistent/taskmedic-tool'" in rows[1]["error"]


async def test_a_plan_changed_after_it_was_stored_is_not_run(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """The plan must match its hash (what was approved is what runs)."""
    marker = tmp_path / "ran"
    action_id = await insert_action(journal_dsn, plan(sh("harmless", "true")), state="skipped")
    await fetch(
        journal_dsn,
        "UPDATE actions SET state = 'pending', plan = jsonb_set(plan, '{steps,0,script,argv}',"
        " %s::jsonb) WHERE id = %s RETURNING id",
        json.dumps(["touch", str(marker)]),
        action_id,
    )
    await executors()
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    assert "does not match its plan_hash" in row["reason"]
    assert not marker.exists()
    assert await action(journal_dsn, action_id)
