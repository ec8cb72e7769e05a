"""Text from alerts and steps cannot rewrite an operator's terminal: `actions list`, `show`
and `log` show control characters and bidi overrides as escapes, keep UTF-8 text as it is,
and `--json` and `log --raw` stay exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from healer.terminal import printable
from tests.healer.log_helpers import append_chunk, create_action, write_config
from tests.healer.test_log_cli import run

LABEL = "\x1b[2J\x1b[1;1Hall good\r\u202eévité"
SHOWN = "\\x1b[2J\\x1b[1;1Hall good\\x0d\\u202eévité"


@pytest.fixture
def config(pg_dsn: str, tmp_path: Path) -> Path:
    return write_config(tmp_path, pg_dsn, [])


def test_printable_escapes_controls_and_bidi_and_keeps_text() -> None:
    assert printable(LABEL) == SHOWN
    assert printable("a\tb\nc\x7f\x85\u2066", multiline=True) == "a\tb\nc\\x7f\\x85\\u2066"
    assert printable("a\tb\nc") == "a\\x09b\\x0ac"
    assert printable("Zürich ✓ 東京") == "Zürich ✓ 東京"


async def test_list_and_show_escape_labels_and_reasons(
    journal: psycopg.AsyncConnection[Any], config: Path
) -> None:
    aid = await create_action(journal, labels={"alertname": LABEL, "host": LABEL})
    await journal.execute("UPDATE actions SET reason = %s WHERE id = %s", (LABEL, aid))
    for command in ("list", "show"):
        args = [str(aid)] if command == "show" else []
        done = await run("actions", command, "--config", str(config), *args)
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert SHOWN in out, out
        assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
        exact = await run("actions", command, "--config", str(config), *args, "--json")
        parsed = json.loads(exact.stdout)
        item = parsed["items"][0] if command == "list" else parsed
        assert item["reason"] == LABEL and item["alert"]["labels"]["host"] == LABEL
        assert b"\x1b" not in exact.stdout  # JSON escapes it: exact, and safe to print


async def test_log_escapes_step_output_unless_raw(
    journal: psycopg.AsyncConnection[Any], config: Path
) -> None:
    aid = await create_action(journal)
    written = "line 1\n\tindented\x1b]0;owned\x07 ok\rclé\n".encode() + b"\xff\n"
    await append_chunk(journal, aid, written[:20])
    await append_chunk(journal, aid, written[20:])  # splits no escape, keeps UTF-8 whole
    done = await run("actions", "log", "--config", str(config), str(aid))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "line 1\n\tindented\\x1b]0;owned\\x07 ok\\x0dclé\n\\xff\n"
    raw = await run("actions", "log", "--config", str(config), str(aid), "--raw")
    assert raw.stdout == written
