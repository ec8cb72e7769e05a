"""`taskmedic actions log ID [-f]` and `taskmedic journal prune`, run as real commands."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.services import ROOT
from tests.support.log_helpers import append_chunk, create_action, set_state, write_config

CLI = [sys.executable, "-m", "healer.cli"]


@pytest.fixture
def config(journal_dsn: str, tmp_path: Path) -> Path:
    return write_config(tmp_path, journal_dsn, [])


async def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


async def test_log_prints_each_stream_to_its_own_descriptor_byte_for_byte(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    aid = await create_action(journal_conn, steps=2)
    await append_chunk(journal_conn, aid, b"out \xff raw\n")
    await append_chunk(journal_conn, aid, b"err line\n", stream="stderr")
    await append_chunk(journal_conn, aid, b"second step\n", step=1)
    done = await run("actions", "log", "--config", str(config), str(aid), "--raw")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"out \xff raw\nsecond step\n"
    assert done.stderr == b"err line\n"
    # Steps are numbered from 1, as in the console and in every reason.
    only = await run("actions", "log", "--config", str(config), str(aid), "--raw", "--step", "2")
    assert only.stdout == b"second step\n"
    first = await run("actions", "log", "--config", str(config), str(aid), "--raw", "--step", "1")
    assert first.stdout == b"out \xff raw\n"
    zero = await run("actions", "log", "--config", str(config), str(aid), "--step", "0")
    assert zero.returncode == 2
    assert b"steps are numbered from 1" in zero.stderr


async def test_log_of_an_unknown_action_says_so_and_exits_1(
    config: Path, journal_conn: Any
) -> None:
    for extra in ([], ["-f"]):
        done = await run("actions", "log", "--config", str(config), "424242", *extra)
        assert done.returncode == 1
        assert b"no action 424242" in done.stderr


async def test_log_follow_prints_new_output_until_the_action_ends(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    """`-f` shows what is there, then each new chunk as it is written, and exits at the end."""
    aid = await create_action(journal_conn)
    await append_chunk(journal_conn, aid, "already there\n")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "actions",
        "log",
        "--config",
        str(config),
        str(aid),
        "-f",
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"already there\n"
        for i in range(3):
            await append_chunk(journal_conn, aid, f"live {i}\n")
            assert await asyncio.wait_for(proc.stdout.readline(), 10) == f"live {i}\n".encode()
        await set_state(journal_conn, aid, "failed")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert f"[action {aid} failed]".encode() in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_journal_prune_dry_run_counts_then_prune_deletes_old_chunks_only(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    old_at = datetime.now(UTC) - timedelta(days=45)
    old = await create_action(journal_conn, state="succeeded", created_at=old_at)
    for _ in range(3):
        await append_chunk(journal_conn, old, b"12345", at=old_at)
    recent = await create_action(journal_conn)
    keep = await append_chunk(journal_conn, recent, b"fresh")

    async def chunk_ids() -> list[int]:
        cur = await journal_conn.execute("SELECT id FROM log_chunks ORDER BY id")
        return [r[0] for r in await cur.fetchall()]

    dry = await run("journal", "prune", "--config", str(config), "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert b"would delete 3 log chunks (15 bytes) of 1 actions" in dry.stdout
    assert len(await chunk_ids()) == 4

    done = await run("journal", "prune", "--config", str(config), "--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert b"deleted 3 log chunks (15 bytes) of 1 actions" in done.stdout
    assert await chunk_ids() == [keep]
    cur = await journal_conn.execute("SELECT count(*) FROM actions")
    assert await cur.fetchone() == (2,)

    bad = await run("journal", "prune", "--config", str(config), "--older-than", "soon")
    assert bad.returncode == 2
    assert b"--older-than" in bad.stderr
