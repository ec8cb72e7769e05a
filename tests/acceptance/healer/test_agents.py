"""Steps on other hosts: real `taskmedic agent` processes on a real broker, a real executor,
the real journal. Each agent serves one host's queue; what a host printed and how its run
ended is read back from the journal as the API and console read it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from healer.agents.transport import RUN_TASK, RunMessage, send_run, sign
from healer.journal import host_runs as journal_host_runs
from healer.metrics import HealerMetrics
from healer.plan import HostsSpec, PlanStep, ScriptSpec, UndoSpec
from tests.support.agents import AgentFleet, delete_queues, host_output, host_runs, on_hosts
from tests.support.journal_helpers import (
    StartExecutor,
    fetch,
    gone,
    insert_action,
    kill_quietly,
    plan,
    state_in,
    until,
)

BOTH_WAYS = pytest.mark.parametrize("fleet", ["journal", "message"], indirect=True)


@pytest.fixture
def fleet(
    request: pytest.FixtureRequest, broker_url: str, journal_dsn: str, tmp_path: Path
) -> Iterator[AgentFleet]:
    """Agents on the test's Redis with journal access; `BOTH_WAYS` runs a test again with
    agents that report by message."""
    mode = getattr(request, "param", "journal")
    f = AgentFleet(broker_url, tmp_path, journal_dsn if mode == "journal" else None)
    yield f
    f.stop_all()


@BOTH_WAYS
async def test_a_step_runs_once_on_each_host_and_each_host_output_is_kept_apart(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor
) -> None:
    for host in ("app1", "app2"):
        await asyncio.to_thread(fleet.start, host)
    await executors(agents=fleet.settings)
    code = 'echo "hello as $TASKMEDIC_LABEL_ALERTNAME, ${PYTHONPATH:-no PYTHONPATH}"; '
    code += "cat; echo; echo done"
    env = {"TASKMEDIC_LABEL_ALERTNAME": "TestAlert"}
    step = on_hosts("greet", code, ["app1", "app2"], env=env)
    action_id = await insert_action(journal_dsn, plan(step))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=30)
    assert row["state"] == "succeeded", row["reason"]
    runs = await host_runs(journal_dsn, action_id)
    assert sorted(r["host"] for r in runs) == ["app1", "app2"]
    assert {r["state"] for r in runs} == {"succeeded"}
    assert all(r["exit_code"] == 0 and r["agent"].startswith(r["host"] + "@") for r in runs)
    for host in ("app1", "app2"):
        out = await host_output(journal_dsn, action_id, host)
        # The declared environment on the minimal base, the alert JSON on stdin: as locally.
        # (The agent itself runs with PYTHONPATH set: it does not reach the script.)
        assert out.startswith(b"hello as TestAlert, no PYTHONPATH\n{"), out
        assert b'"alertname":"TestAlert"' in out.replace(b" ", b"")
        assert out.endswith(b"done\n")
        assert out.count(b"hello") == 1


async def test_a_host_no_agent_serves_times_out_and_names_its_queue(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor
) -> None:
    await asyncio.to_thread(fleet.start, "app1")
    await executors(agents=fleet.settings)
    step = on_hosts("greet", "echo hi", ["app1", "ghost"], timeout=1.0, kill_grace=0.5)
    action_id = await insert_action(journal_dsn, plan(step))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=30)
    assert row["state"] == "failed"
    assert "1 host failed (tolerance 0)" in row["reason"]
    runs = {r["host"]: r for r in await host_runs(journal_dsn, action_id)}
    assert runs["app1"]["state"] == "succeeded"
    assert runs["ghost"]["state"] == "timed_out"
    assert f"no agent started it from queue {fleet.prefix}ghost within" in runs["ghost"]["error"]
    assert runs["ghost"]["started_at"] is None


async def test_batches_stop_at_the_tolerance_and_skip_the_hosts_not_reached(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor
) -> None:
    for host in ("h1", "h2", "h3"):
        await asyncio.to_thread(fleet.start, host)
    await executors(agents=fleet.settings)
    # h1 fails (tolerated), h2 fails (one too many): h3, in the third batch, is never sent.
    # An agent tells its script which host it runs for in TASKMEDIC_HOST.
    code = 'echo "on $TASKMEDIC_HOST"; test "$TASKMEDIC_HOST" = h3'
    hosts = ["h1", "h2", "h3"]
    per_host = on_hosts("fail-first-two", code, hosts, batch=1, tolerance=1)
    action_id = await insert_action(journal_dsn, plan(per_host))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
    assert row["state"] == "failed"
    assert "2 hosts failed (tolerance 1)" in row["reason"]
    runs = {r["host"]: r for r in await host_runs(journal_dsn, action_id)}
    assert [runs[h]["batch"] for h in hosts] == [0, 1, 2]
    assert runs["h1"]["state"] == runs["h2"]["state"] == "failed"
    assert runs["h3"]["state"] == "skipped"
    assert runs["h3"]["sent_at"] is None
    assert "not run: 2 hosts failed (tolerance 1)" in runs["h3"]["error"]


@pytest.fixture(params=["redis-journal", "redis-message", "rabbitmq-journal", "rabbitmq-message"])
def kill_fleet(
    request: pytest.FixtureRequest, broker_url: str, journal_dsn: str, tmp_path: Path
) -> Iterator[AgentFleet]:
    """Agents on Redis (redelivery after a 2 s visibility timeout) or on RabbitMQ (redelivery
    when the dead agent's connection closes), with or without journal access."""
    broker, mode = request.param.split("-")
    url = request.getfixturevalue("amqp_url") if broker == "rabbitmq" else broker_url
    f = AgentFleet(
        url,
        tmp_path,
        journal_dsn if mode == "journal" else None,
        visibility_timeout=2.0 if broker == "redis" else None,
    )
    yield f
    f.stop_all()
    if broker == "rabbitmq":
        delete_queues(url, f.prefix, ["app1", "replies"])


async def test_an_agent_killed_mid_step_interrupts_its_host_and_redelivery_never_runs_it_twice(
    kill_fleet: AgentFleet, journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    fleet = kill_fleet
    agent = await asyncio.to_thread(fleet.start, "app1")
    await executors(agents=fleet.settings)
    runs_file = tmp_path / "runs"
    code = f"echo $$ >> {runs_file}; echo started; sleep 60"
    action_id = await insert_action(journal_dsn, plan(on_hosts("slow", code, ["app1"])))
    await until(lambda: host_output(journal_dsn, action_id, "app1"), 30, "the script's first line")
    script_pid = int(runs_file.read_text().split()[0])
    try:
        agent.kill()  # kill -9: no ack, no goodbye; its script is orphaned, as on a real host
        row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=30)
        runs = await host_runs(journal_dsn, action_id)
        assert [r["state"] for r in runs] == ["interrupted"]
        assert "stopped renewing its lease" in runs[0]["error"]
        assert "1 host failed" in row["reason"]
        # The message comes back to the next agent of that host, which must not run it.
        again = await asyncio.to_thread(fleet.start, "app1")
        ignored = f"run {runs[0]['id']} on app1: already taken"
        await until(lambda: _async(ignored in again.output()), 40, "the redelivered message")
        assert len(runs_file.read_text().split()) == 1
    finally:
        kill_quietly(script_pid)


async def _async(value: bool) -> bool:
    return value


@BOTH_WAYS
async def test_a_cancel_stops_the_script_on_every_host(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    for host in ("app1", "app2"):
        await asyncio.to_thread(fleet.start, host)
    await executors(agents=fleet.settings)
    pids = tmp_path / "pids"
    code = f"echo $$ >> {pids}; echo started; sleep 60; echo never"
    action_id = await insert_action(journal_dsn, plan(on_hosts("slow", code, ["app1", "app2"])))

    async def both_started() -> bool:
        return all([await host_output(journal_dsn, action_id, h) for h in ("app1", "app2")])

    await until(both_started, 30, "both hosts to print")
    await fetch(
        journal_dsn,
        "UPDATE actions SET cancel_requested_at = now() WHERE id = %s RETURNING id",
        action_id,
    )
    row = await state_in(journal_dsn, action_id, "cancelled", "failed", timeout=30)
    assert row["state"] == "cancelled"
    assert {r["state"] for r in await host_runs(journal_dsn, action_id)} == {"cancelled"}
    for pid in map(int, pids.read_text().split()):

        async def stopped(pid: int = pid) -> bool:
            return gone(pid)

        await until(stopped, 15, f"script {pid} to stop")
    for host in ("app1", "app2"):
        assert b"never" not in await host_output(journal_dsn, action_id, host)


@BOTH_WAYS
async def test_a_pause_waits_for_a_resume_before_the_next_batch(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor
) -> None:
    for host in ("canary", "rest"):
        await asyncio.to_thread(fleet.start, host)
    await executors(agents=fleet.settings)
    step = on_hosts("roll", "echo rolled", ["canary", "rest"], batch=1, pause_after=["canary"])
    action_id = await insert_action(journal_dsn, plan(step))

    async def paused() -> bool:
        rows = await fetch(journal_dsn, "SELECT paused_at FROM actions WHERE id = %s", action_id)
        return rows[0]["paused_at"] is not None

    await until(paused, 30, "the pause after the canary")
    states = {r["host"]: r["state"] for r in await host_runs(journal_dsn, action_id)}
    assert states == {"canary": "succeeded", "rest": "pending"}
    async with await psycopg.AsyncConnection.connect(journal_dsn, row_factory=dict_row) as c:
        assert await journal_host_runs.resume(c, action_id, "alice")
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=30)
    assert row["state"] == "succeeded", row["reason"]
    assert row["resumed_by"] == "alice"
    assert {r["state"] for r in await host_runs(journal_dsn, action_id)} == {"succeeded"}


@BOTH_WAYS
async def test_a_message_not_signed_with_the_agents_key_runs_nothing(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """Whoever can publish on the broker, without the key, makes no agent run anything."""
    agent = await asyncio.to_thread(fleet.start, "app1")
    mark = tmp_path / "forged-ran"
    body = RunMessage(
        run_id=1,
        token="0" * 32,
        action_id=1,
        step_idx=0,
        host="app1",
        script=ScriptSpec(argv=["touch", str(mark)]),
    ).model_dump(mode="json")
    forged = sign(b"not-the-agents-key-at-all", body)
    app = fleet.app()
    try:
        await asyncio.to_thread(app.send_task, RUN_TASK, args=[forged], queue=fleet.prefix + "app1")
        await asyncio.to_thread(app.send_task, RUN_TASK, args=[body], queue=fleet.prefix + "app1")
    finally:
        app.close()
    await until(
        lambda: _async(agent.output().count("a run message was dropped") == 2),
        20,
        "both forged messages to be dropped",
    )
    assert "signature does not match" in agent.output()
    assert "is not signed" in agent.output()
    assert not mark.exists()


async def test_a_signed_message_whose_script_is_not_the_plans_is_refused(
    broker_url: str, journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """Holding the key is not enough where agents read the journal: they run the plan's
    script, never another one a message brings."""
    fleet = AgentFleet(broker_url, tmp_path, journal_dsn)
    try:
        await asyncio.to_thread(fleet.start, "app1")
        await executors(agents=fleet.settings)
        mark = tmp_path / "swapped-ran"
        step = on_hosts("planned", "echo planned", ["app1"], timeout=30.0)
        action_id = await insert_action(journal_dsn, plan(step), state="awaiting_approval")
        rows = await fetch(
            journal_dsn,
            "INSERT INTO host_runs (action_id, step_idx, attempt, host, queue, token, state,"
            " sent_at, deadline) VALUES (%s, 0, 1, 'app1', %s, 'tok', 'sent', now(),"
            " now() + interval '1 minute') RETURNING id",
            action_id,
            fleet.prefix + "app1",
        )
        swapped = RunMessage(
            run_id=rows[0]["id"],
            token="tok",
            action_id=action_id,
            step_idx=0,
            host="app1",
            script=ScriptSpec(argv=["touch", str(mark)]),
        )
        app = fleet.app()
        try:
            key = fleet.settings.key()
            await asyncio.to_thread(send_run, app, key, swapped, fleet.prefix + "app1", 60)
        finally:
            app.close()

        async def refused() -> dict[str, Any] | None:
            runs = await host_runs(journal_dsn, action_id)
            return runs[0] if runs[0]["state"] == "failed" else None

        run = await until(refused, 20, "the swapped script to be refused")
        assert "not the one of the action's plan: refused" in run["error"]
        assert not mark.exists()
    finally:
        fleet.stop_all()


async def test_the_healer_exports_whether_an_agent_serves_each_host(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor
) -> None:
    agent = await asyncio.to_thread(fleet.start, "app1")
    settings = fleet.settings.model_copy(update={"hosts": ["app1", "app9"]})
    metrics = HealerMetrics()
    await executors(agents=settings, metrics=metrics)

    def up(host: str) -> float | None:
        return metrics.registry.get_sample_value("taskmedic_agent_up", {"queue": host})

    await until(lambda: _async(up("app1") == 1.0 and up("app9") == 0.0), 20, "agent_up")
    agent.kill()
    await until(lambda: _async(up("app1") == 0.0), 30, "agent_up of the killed agent")


async def test_a_later_failure_runs_the_undo_on_the_hosts_where_the_step_succeeded(
    fleet: AgentFleet, journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    for host in ("app1", "app2"):
        await asyncio.to_thread(fleet.start, host)
    await executors(agents=fleet.settings)
    undone = tmp_path / "undone"
    step = PlanStep(
        name="drain",
        kind="script",
        on=HostsSpec(hosts=["app1", "app2"]),
        script=ScriptSpec(argv=["sh", "-c", "echo drained"]),
        undo=UndoSpec(script=ScriptSpec(argv=["sh", "-c", f'echo "$TASKMEDIC_HOST" >> {undone}'])),
    )
    fails = PlanStep(name="check", kind="script", script=ScriptSpec(argv=["false"]))
    action_id = await insert_action(journal_dsn, plan(step, fails))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=30)
    assert row["state"] == "failed"
    assert "undone: steps 1" in row["reason"]
    assert sorted(undone.read_text().split()) == ["app1", "app2"]
    runs = await host_runs(journal_dsn, action_id)
    assert sorted((r["purpose"], r["host"], r["state"]) for r in runs) == [
        ("step", "app1", "succeeded"),
        ("step", "app2", "succeeded"),
        ("undo", "app1", "succeeded"),
        ("undo", "app2", "succeeded"),
    ]


async def test_an_unreachable_agents_broker_leaves_the_healer_ready_and_agent_up_absent(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agents' broker away is not the healer down: no loop counts as failed (readiness),
    and taskmedic_agent_up says nothing rather than 0 for every host."""
    fleet = AgentFleet("redis://127.0.0.1:1/0", tmp_path)
    settings = fleet.settings.model_copy(update={"hosts": ["app1"]})
    metrics = HealerMetrics()
    await executors(agents=settings, metrics=metrics)
    await until(
        lambda: _async("agents' reply queue:" in caplog.text), 20, "the reply queue's retry"
    )
    await until(
        lambda: _async("agents: cannot ask the broker" in caplog.text), 20, "the health look"
    )
    assert metrics.loops.down() == {}
    assert metrics.registry.get_sample_value("taskmedic_agent_up", {"queue": "app1"}) is None
