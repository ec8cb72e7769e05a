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
from tests.support.log_helpers import (
    add_host_run,
    append_chunk,
    create_action,
    set_paused,
    set_state,
    write_config,
)

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


async def test_log_starts_each_host_line_with_its_host_and_host_narrows_it(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    """Lines a host run printed read `[host] …` (escaped like the rest); `--host` keeps one
    host's; `--raw` writes the bytes as they are."""
    aid = await create_action(journal_conn, steps=2)
    await append_chunk(journal_conn, aid, "local\n")
    await append_chunk(journal_conn, aid, "web1 \x1b[2J half", step=1, host="web1")
    await append_chunk(journal_conn, aid, "web2 line\n", step=1, host="web2")
    await append_chunk(journal_conn, aid, " done\n", step=1, host="web1")
    await append_chunk(journal_conn, aid, "web2 oops\n", step=1, host="web2", stream="stderr")
    done = await run("actions", "log", "--config", str(config), str(aid))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"local\n[web1] web1 \\x1b[2J half[web2] web2 line\n done\n"
    assert done.stderr == b"[web2] web2 oops\n"
    one = await run("actions", "log", "--config", str(config), str(aid), "--host", "web1")
    assert one.stdout == b"[web1] web1 \\x1b[2J half done\n"
    assert one.stderr == b""
    raw = await run("actions", "log", "--config", str(config), str(aid), "--raw", "--host", "web2")
    assert (raw.stdout, raw.stderr) == (b"web2 line\n", b"web2 oops\n")


async def test_log_follow_prefixes_live_host_output(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    """`-f --host` prints that host's new lines, prefixed, as they are written."""
    aid = await create_action(journal_conn)
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "actions",
        "log",
        "--config",
        str(config),
        str(aid),
        "-f",
        "--host",
        "web2",
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        await append_chunk(journal_conn, aid, "web1 live\n", host="web1")
        await append_chunk(journal_conn, aid, "web2 live\n", host="web2")
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"[web2] web2 live\n"
        await set_state(journal_conn, aid, "succeeded")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_actions_show_and_list_report_host_runs(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    """`actions show` lists each step's host runs and the pause; `actions list` counts them."""
    aid = await create_action(journal_conn, steps=2)
    await add_host_run(journal_conn, aid, "web1", step=1, exit_code=0, seconds=2.5, agent="ag-a")
    await add_host_run(
        journal_conn, aid, "web2", step=1, state="failed", exit_code=7, error="exit status 7"
    )
    await add_host_run(journal_conn, aid, "web3", step=1, state="pending", batch=1)
    await set_paused(journal_conn, aid)
    plain = await create_action(journal_conn)

    shown = await run("actions", "show", "--config", str(config), str(aid))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.decode().splitlines()
    web1 = next(line.split() for line in lines if "web1" in line)
    assert web1 == ["web1", "succeeded", "0", "2.5", "ag-a"]
    web2 = next(line.split() for line in lines if "web2" in line)
    assert web2[:3] == ["web2", "failed", "7"]
    assert web2[-3:] == ["exit", "status", "7"]
    web3 = next(line.split() for line in lines if "web3" in line)
    assert web3 == ["web3", "pending", "-", "-", "-"]
    assert any("HOST" in line and "AGENT" in line for line in lines)
    assert any(f"taskmedic actions resume {aid}" in line for line in lines)

    listed = await run("actions", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.decode().splitlines()}
    assert "HOSTS" in rows["ID"]
    assert "hosts 1/3 ok, 1 failed" in rows[str(aid)]
    assert "hosts" not in rows[str(plain)]


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
