"""`kill -9` of a healer mid-action: no action stays `running` once its lease expires."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import ROOT
from tests.support.journal_helpers import (
    StartExecutor,
    action,
    events,
    gone,
    insert_action,
    kill_quietly,
    output,
    plan,
    sh,
    state_in,
    steps,
    until,
)

LONG = "sleep 30 & echo $! > {d}/child; echo working; wait"


@pytest.fixture
def runner(journal_dsn: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Executor processes started with `start_runner`; killed after the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    child = tmp_path / "child"
    if child.exists():  # the script outlived its healer (as it would in production)
        kill_quietly(int(child.read_text()))


async def start_runner(procs: list[subprocess.Popen[bytes]], dsn: str, owner: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.executor_runner",
            dsn,
            "--lease",
            "2",
            "--owner",
            owner,
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    procs.append(proc)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line == b"ready\n", f"the executor process did not start: {line!r}"


async def wait_file(path: Path) -> str:
    async def read() -> str:
        return path.read_text().strip() if path.exists() else ""

    return await until(read, 30, f"{path} to be written")


async def test_kill_9_during_a_script_leaves_the_action_interrupted_then_failed(
    journal_dsn: str,
    executors: StartExecutor,
    runner: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """on_interrupt fail: the step shows `interrupted` with the output flushed before the kill."""
    await start_runner(runner, journal_dsn, "victim")
    action_id = await insert_action(journal_dsn, plan(sh("long", LONG.format(d=tmp_path))))
    await wait_file(tmp_path / "child")
    await until(
        lambda: output(journal_dsn, action_id, "stdout"), 10, "the first line in the journal"
    )
    os.kill(runner[0].pid, signal.SIGKILL)
    runner[0].wait(timeout=10)
    assert (await action(journal_dsn, action_id))["state"] == "running"  # nobody knows yet

    await executors(lease=2.0)  # another replica: its sweeper notices the expired lease
    row = await state_in(journal_dsn, action_id, "failed", "succeeded", "pending", timeout=15)
    assert row["state"] == "failed"
    assert "the lease of victim expired" in row["reason"]
    (step,) = await steps(journal_dsn, action_id)
    assert step["state"] == "interrupted"
    assert "lease of victim expired" in step["error"]
    assert await output(journal_dsn, action_id, "stdout") == b"working\n"
    transitions = [(e["from_state"], e["to_state"]) for e in await events(journal_dsn, action_id)]
    assert transitions[-2:] == [("running", "interrupted"), ("interrupted", "failed")]


async def test_kill_9_with_retry_re_runs_only_the_unfinished_steps(
    journal_dsn: str,
    executors: StartExecutor,
    runner: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """on_interrupt retry: another executor resumes; a step recorded as done is not re-run."""
    log = tmp_path / "log"
    flag = tmp_path / "flag"
    second = f"if [ -e {flag} ]; then echo resumed >> {log}; else touch {flag}; {LONG}; fi"
    p = plan(
        sh("first", f"echo first >> {log}"),
        sh("second", second.format(d=tmp_path)),
        on_interrupt="retry",
    )
    await start_runner(runner, journal_dsn, "victim")
    action_id = await insert_action(journal_dsn, p)
    child = int(await wait_file(tmp_path / "child"))
    os.kill(runner[0].pid, signal.SIGKILL)
    runner[0].wait(timeout=10)

    await executors(lease=2.0)
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=20)
    assert row["state"] == "succeeded"
    assert row["attempt"] == 2
    assert log.read_text().split() == ["first", "resumed"]
    first, second_step = await steps(journal_dsn, action_id)
    assert (first["state"], first["attempt"]) == ("succeeded", 1)
    assert (second_step["state"], second_step["attempt"]) == ("succeeded", 2)
    to_states = [e["to_state"] for e in await events(journal_dsn, action_id)]
    assert to_states[-4:] == ["interrupted", "pending", "running", "succeeded"]
    kill_quietly(child)
    await until(lambda: asyncio.sleep(0, gone(child)), 10, "the orphaned sleep to end")
