"""Following a log across two real `taskmedic healer` processes sharing one journal."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.support.log_helpers import (
    TOKEN,
    Event,
    HealerProcess,
    fire,
    read_events,
    start_healer,
    write_config,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LINES = 15
# Prints `line 0` … `line 14`, one every 0.2 s (3 s in all), flushing each.
TICKER = (
    "import time\n"
    f"for i in range({LINES}):\n"
    "    print(f'line {i}', flush=True)\n"
    "    time.sleep(0.2)\n"
)
RULES = [
    {
        "name": "ticker",
        "match": {"alertname": "TestTicker"},
        "steps": [{"name": "tick", "script": {"argv": [sys.executable, "-c", TICKER]}}],
    }
]


@pytest.fixture
def replicas(journal_dsn: str, tmp_path: Path) -> Iterator[list[HealerProcess]]:
    config = write_config(tmp_path, journal_dsn, RULES)
    started: list[HealerProcess] = []
    try:
        for name in ("a", "b"):
            started.append(start_healer(config, tmp_path, name))
        yield started
    finally:
        for h in started:
            h.stop()


async def action_state(dsn: str, action_id: int) -> tuple[str, str | None]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT state, lease_owner FROM actions WHERE id = %s", (action_id,)
        )
        row = await cur.fetchone()
        assert row is not None
        return row[0], row[1]


async def follow(
    session: aiohttp.ClientSession, healer: HealerProcess, action_id: int, last_id: str = ""
) -> AsyncIterator[Event]:
    headers = {**AUTH, "Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    async with session.get(f"{healer.url}/api/actions/{action_id}/log", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for e in read_events(resp):
            yield e


async def test_followers_on_both_replicas_see_the_step_live_wherever_it_runs(
    replicas: list[HealerProcess], journal_dsn: str
) -> None:
    """The step runs on one replica; a follower on each replica sees every line, in order,
    the first one while the action still runs, and the `end` event when it is done."""
    a, b = replicas
    (action_id,) = await fire(a, {"alertname": "TestTicker", "instance": "x"})

    async def collect(healer: HealerProcess) -> tuple[list[str], str, str]:
        lines: list[str] = []
        state_at_first_line = ""
        async with aiohttp.ClientSession() as session:
            async for e in follow(session, healer, action_id):
                if e.event == "stdout":
                    if not lines:
                        state_at_first_line = (await action_state(journal_dsn, action_id))[0]
                    lines.extend(e.data.splitlines())
                elif e.event == "end":
                    return lines, state_at_first_line, json.loads(e.data)["state"]
        raise AssertionError(f"the stream on {healer.url} closed without an end event")

    (lines_a, first_a, end_a), (lines_b, first_b, end_b) = await asyncio.wait_for(
        asyncio.gather(collect(a), collect(b)), 60
    )
    expected = [f"line {i}" for i in range(LINES)]
    assert lines_a == expected
    assert lines_b == expected
    assert first_a == first_b == "running"
    assert end_a == end_b == "succeeded"


async def test_a_follower_resumes_on_the_other_replica_without_gap_or_repeat(
    replicas: list[HealerProcess],
) -> None:
    """Reconnecting to another replica with Last-Event-ID continues exactly where it was."""
    a, b = replicas
    (action_id,) = await fire(b, {"alertname": "TestTicker", "instance": "y"})
    seen: list[str] = []
    last_id = ""
    async with aiohttp.ClientSession() as session:
        async for e in follow(session, a, action_id):
            if e.event == "stdout":
                seen.extend(e.data.splitlines())
                assert e.id is not None
                last_id = e.id
                if len(seen) >= 3:
                    break  # the connection to replica a drops
        ended = ""
        async for e in follow(session, b, action_id, last_id):
            if e.event == "stdout":
                seen.extend(e.data.splitlines())
            elif e.event == "end":
                ended = json.loads(e.data)["state"]
                break
    assert seen == [f"line {i}" for i in range(LINES)]
    assert ended == "succeeded"
