"""Live output of real processes, as the journal holds it while and after they run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg

from tests.support.journal_helpers import (
    StartExecutor,
    chunks,
    insert_action,
    output,
    plan,
    script,
    sh,
    state_in,
    steps,
    until,
)

INTERLEAVE = """
import sys
for i in range(3000):
    sys.stdout.write(f"out {i}\\n"); sys.stdout.flush()
    sys.stderr.write(f"err {i}\\n"); sys.stderr.flush()
"""


async def test_stdout_and_stderr_stay_apart_and_in_order(
    journal_dsn: str, executors: StartExecutor
) -> None:
    """Both pipes are read concurrently; each stream's chunks, in id order, are its output."""
    await executors()
    action_id = await insert_action(
        journal_dsn, plan(script("chatty", [sys.executable, "-c", INTERLEAVE]))
    )
    assert (await state_in(journal_dsn, action_id, "succeeded", "failed"))["state"] == "succeeded"
    assert await output(journal_dsn, action_id, "stdout") == b"".join(
        f"out {i}\n".encode() for i in range(3000)
    )
    assert await output(journal_dsn, action_id, "stderr") == b"".join(
        f"err {i}\n".encode() for i in range(3000)
    )
    rows = await chunks(journal_dsn, action_id)
    for stream in ("stdout", "stderr"):
        stamps = [c["at"] for c in rows if c["stream"] == stream]
        assert len(stamps) > 1
        assert stamps == sorted(stamps)
    (step,) = await steps(journal_dsn, action_id)
    assert step["output_bytes"] == sum(len(f"out {i}\n") * 2 for i in range(3000))


async def test_a_partial_line_is_in_the_journal_while_the_step_still_runs(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """No newline: flushed after at most a second, long before the process ends."""
    go = tmp_path / "go"
    await executors()
    code = f"printf 'half a line'; while [ ! -e {go} ]; do sleep 0.05; done; printf ' and the rest'"
    action_id = await insert_action(journal_dsn, plan(sh("slow", code, timeout=60)))
    seen = await until(lambda: output(journal_dsn, action_id, "stdout"), 5, "the partial line")
    assert seen == b"half a line"
    (step,) = await steps(journal_dsn, action_id)
    assert step["state"] == "running"
    assert not go.exists()
    go.touch()
    await state_in(journal_dsn, action_id, "succeeded")
    assert await output(journal_dsn, action_id, "stdout") == b"half a line and the rest"


async def test_the_cap_keeps_head_and_tail_with_the_marker_and_the_true_count(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    """5 MB of random bytes, cap 64 KiB: the first and last 32 KiB, exactly, around a marker."""
    data = os.urandom(5_000_000)
    (tmp_path / "blob").write_bytes(data)
    await executors(output_cap=64 * 1024)
    action_id = await insert_action(
        journal_dsn, plan(script("flood", ["cat", str(tmp_path / "blob")]))
    )
    assert (await state_in(journal_dsn, action_id, "succeeded", "failed"))["state"] == "succeeded"
    rows = [c for c in await chunks(journal_dsn, action_id) if c["step_idx"] == 0]
    markers = [i for i, c in enumerate(rows) if c["stream"] == "system" and b"elided" in c["data"]]
    assert len(markers) == 1
    m = markers[0]
    head = b"".join(bytes(c["data"]) for c in rows[:m] if c["stream"] == "stdout")
    tail = b"".join(bytes(c["data"]) for c in rows[m + 1 :] if c["stream"] == "stdout")
    assert head == data[: 32 * 1024]
    assert tail == data[-32 * 1024 :]
    assert bytes(rows[m]["data"]) == f"[… {5_000_000 - 64 * 1024} bytes elided …]\n".encode()
    (step,) = await steps(journal_dsn, action_id)
    assert step["output_bytes"] == 5_000_000


async def test_a_100_mb_flood_stores_only_the_cap(
    journal_dsn: str, executors: StartExecutor
) -> None:
    """The step finishes; the journal holds cap bytes of it; output_bytes says 100 MB."""
    await executors()
    action_id = await insert_action(
        journal_dsn, plan(script("flood", ["head", "-c", "100000000", "/dev/zero"]))
    )
    assert (await state_in(journal_dsn, action_id, "succeeded", "failed"))["state"] == "succeeded"
    assert len(await output(journal_dsn, action_id, "stdout")) == 1 << 20
    (step,) = await steps(journal_dsn, action_id)
    assert step["output_bytes"] == 100_000_000


async def test_bytes_that_are_not_utf8_round_trip(
    journal_dsn: str, executors: StartExecutor
) -> None:
    await executors()
    code = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe\\x80 caf\\xe9\\n'); "
    code += "sys.stderr.buffer.write(b'\\x00\\xc3(')"
    action_id = await insert_action(
        journal_dsn, plan(script("bytes", [sys.executable, "-c", code]))
    )
    await state_in(journal_dsn, action_id, "succeeded")
    assert await output(journal_dsn, action_id, "stdout") == b"\xff\xfe\x80 caf\xe9\n"
    assert await output(journal_dsn, action_id, "stderr") == b"\x00\xc3("


async def test_every_chunk_insert_notifies_followers(
    journal_dsn: str, executors: StartExecutor
) -> None:
    """pg_notify('taskmedic_log', id) arrives for a chunk (what the SSE endpoint wakes on)."""
    async with await psycopg.AsyncConnection.connect(journal_dsn, autocommit=True) as conn:
        await conn.execute("LISTEN taskmedic_log")
        await executors()
        action_id = await insert_action(journal_dsn, plan(sh("hello", "echo hello")))
        async for note in conn.notifies(timeout=10):
            assert note.payload == str(action_id)
            break
        else:
            raise AssertionError("no taskmedic_log notification")
