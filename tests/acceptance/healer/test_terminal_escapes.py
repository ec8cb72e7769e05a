"""Text from alerts and steps cannot rewrite an operator's terminal: `actions list`, `show`
and `log` show control characters and bidi overrides as escapes, keep UTF-8 text as it is,
and `--json` and `log --raw` stay exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.healer.test_log_cli import run
from tests.support.log_helpers import append_chunk, create_action, write_config

LABEL = "\x1b[2J\x1b[1;1Hall good\r\u202eévité"
SHOWN = "\\x1b[2J\\x1b[1;1Hall good\\x0d\\u202eévité"


@pytest.fixture
def config(journal_dsn: str, tmp_path: Path) -> Path:
    return write_config(tmp_path, journal_dsn, [])


async def test_list_and_show_escape_labels_and_reasons(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    aid = await create_action(journal_conn, labels={"alertname": LABEL, "host": LABEL})
    await journal_conn.execute("UPDATE actions SET reason = %s WHERE id = %s", (LABEL, aid))
    for command in ("list", "show"):
        args = [str(aid)] if command == "show" else []
        done = await run("actions", command, "--config", str(config), *args)
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert SHOWN in out, out
        assert "\x1b" not in out
        assert "\r" not in out
        assert "\u202e" not in out
        exact = await run("actions", command, "--config", str(config), *args, "--json")
        parsed = json.loads(exact.stdout)
        item = parsed["items"][0] if command == "list" else parsed
        assert item["reason"] == LABEL
        assert item["alert"]["labels"]["host"] == LABEL
        assert b"\x1b" not in exact.stdout  # JSON escapes it: exact, and safe to print


async def test_log_escapes_step_output_unless_raw(
    journal_conn: psycopg.AsyncConnection[Any], config: Path
) -> None:
    aid = await create_action(journal_conn)
    written = "line 1\n\tindented\x1b]0;owned\x07 ok\rclé\n".encode() + b"\xff\n"
    await append_chunk(journal_conn, aid, written[:20])
    await append_chunk(journal_conn, aid, written[20:])  # splits no escape, keeps UTF-8 whole
    done = await run("actions", "log", "--config", str(config), str(aid))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "line 1\n\tindented\\x1b]0;owned\\x07 ok\\x0dclé\n\\xff\n"
    raw = await run("actions", "log", "--config", str(config), str(aid), "--raw")
    assert raw.stdout == written
