"""The log API and the actions API with steps on other hosts: every line carries its host."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jsonschema
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from healer.openapi import document
from tests.support.log_helpers import (
    Event,
    add_host_run,
    append_chunk,
    create_action,
    make_app,
    read_events,
    set_paused,
    set_state,
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(
    journal_dsn: str,
    journal_conn: psycopg.AsyncConnection[Any],
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> Client:
    return await aiohttp_client(make_app(journal_dsn))


async def next_event(events: AsyncIterator[Event], timeout: float = 10.0) -> Event:
    return await asyncio.wait_for(anext(events), timeout)


async def _interleaved(conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[int]]:
    """A step whose output came from the healer and two hosts, lines split across chunks."""
    aid = await create_action(conn, steps=2)
    ids = [
        await append_chunk(conn, aid, "local starts\n"),
        await append_chunk(conn, aid, "web1 half", step=1, host="web1"),
        await append_chunk(conn, aid, "web2 one\nweb2 two\n", step=1, host="web2"),
        await append_chunk(conn, aid, " line\nweb1 next\n", step=1, host="web1"),
        await append_chunk(conn, aid, "web2 warns\n", step=1, host="web2", stream="stderr"),
        await append_chunk(conn, aid, "local ends\n", step=1),
    ]
    return aid, ids


async def test_text_log_starts_each_host_line_with_its_host_and_filters_by_host(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """A host's lines read `[host] …` (a line split across its chunks is tagged once), the
    healer's own lines have no prefix, and ?host= keeps one host's output."""
    aid, _ = await _interleaved(journal_conn)
    text = await (await client.get(f"/api/actions/{aid}/log")).text()
    assert text == (
        "local starts\n"
        "[web1] web1 half"
        "[web2] web2 one\n[web2] web2 two\n"
        " line\n[web1] web1 next\n"
        "[web2] web2 warns\n"
        "local ends\n"
    )
    resp = await client.get(f"/api/actions/{aid}/log", params={"host": "web1"})
    assert await resp.text() == "[web1] web1 half line\n[web1] web1 next\n"
    params = {"host": "web2", "stream": "stderr", "step": "1"}
    resp = await client.get(f"/api/actions/{aid}/log", params=params)
    assert await resp.text() == "[web2] web2 warns\n"
    resp = await client.get(f"/api/actions/{aid}/log", params={"host": "db9"})
    assert (resp.status, await resp.text()) == (200, "")
    resp = await client.get(f"/api/actions/{aid}/log", params={"host": "x" * 256})
    assert resp.status == 400
    assert "host" in await resp.text()


async def test_events_name_the_host_of_the_chunks_that_follow(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """A `step` event with the host comes before each run of one host's chunks; the
    healer's own chunks follow a `step` event without a host."""
    aid, ids = await _interleaved(journal_conn)
    resp = await client.get(f"/api/actions/{aid}/log", params={"follow": "1"})
    events = read_events(resp)
    got = [await next_event(events) for _ in range(11)]
    assert got == [
        Event("step", json.dumps({"step": 0}), None),
        Event("stdout", "local starts\n", str(ids[0])),
        Event("step", json.dumps({"step": 1, "host": "web1"}), None),
        Event("stdout", "web1 half", str(ids[1])),
        Event("step", json.dumps({"step": 1, "host": "web2"}), None),
        Event("stdout", "web2 one\nweb2 two\n", str(ids[2])),
        Event("step", json.dumps({"step": 1, "host": "web1"}), None),
        Event("stdout", " line\nweb1 next\n", str(ids[3])),
        Event("step", json.dumps({"step": 1, "host": "web2"}), None),
        Event("stderr", "web2 warns\n", str(ids[4])),
        Event("step", json.dumps({"step": 1}), None),
    ]
    assert await next_event(events) == Event("stdout", "local ends\n", str(ids[5]))
    # Live: a host's chunk written now arrives with its host.
    live = await append_chunk(journal_conn, aid, "web3 late\n", step=1, host="web3")
    assert await next_event(events) == Event("step", json.dumps({"step": 1, "host": "web3"}), None)
    assert await next_event(events) == Event("stdout", "web3 late\n", str(live))
    await set_state(journal_conn, aid, "succeeded")
    assert (await next_event(events)).event == "end"


async def test_following_one_host_skips_the_others(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """?host= on a followed log sends only that host's chunks, live ones too."""
    aid, ids = await _interleaved(journal_conn)
    resp = await client.get(f"/api/actions/{aid}/log", params={"follow": "1", "host": "web2"})
    events = read_events(resp)
    mark = Event("step", json.dumps({"step": 1, "host": "web2"}), None)
    assert await next_event(events) == mark
    assert await next_event(events) == Event("stdout", "web2 one\nweb2 two\n", str(ids[2]))
    assert await next_event(events) == Event("stderr", "web2 warns\n", str(ids[4]))
    await append_chunk(journal_conn, aid, "web1 live\n", step=1, host="web1")
    c = await append_chunk(journal_conn, aid, "web2 live\n", step=1, host="web2")
    assert await next_event(events) == Event("stdout", "web2 live\n", str(c))
    await set_state(journal_conn, aid, "failed")
    assert await next_event(events) == Event("end", json.dumps({"state": "failed"}), None)


def _response_schema(path: str) -> dict[str, Any]:
    doc = document()
    op = doc["paths"][path]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}


async def test_actions_api_shows_host_runs_as_the_openapi_document_describes(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """GET /api/actions/{id} lists each step's host runs and the pause; GET /api/actions
    counts them; both match healer/openapi.yaml."""
    aid = await create_action(journal_conn, steps=2)
    await add_host_run(journal_conn, aid, "web1", step=1, exit_code=0)
    await add_host_run(
        journal_conn, aid, "web2", step=1, state="failed", exit_code=3, error="exit status 3"
    )
    await add_host_run(journal_conn, aid, "web3", step=1, state="pending", batch=1)
    await set_paused(journal_conn, aid)

    a = await (await client.get(f"/api/actions/{aid}")).json()
    jsonschema.validate(a, _response_schema("/api/actions/{id}"))
    assert a["steps"][0]["hosts"] == []
    hosts = {r["host"]: r for r in a["steps"][1]["hosts"]}
    assert hosts["web1"]["state"] == "succeeded"
    assert hosts["web2"]["exit_code"] == 3
    assert hosts["web2"]["error"] == "exit status 3"
    assert hosts["web3"]["batch"] == 1
    assert a["paused_at"] is not None
    assert a["resumed_by"] is None

    listed = await (await client.get("/api/actions")).json()
    jsonschema.validate(listed, _response_schema("/api/actions"))
    item = next(i for i in listed["items"] if i["id"] == aid)
    assert item["hosts"] == {"succeeded": 1, "failed": 1, "total": 3}

    assert (await client.post(f"/api/actions/{aid}/resume")).status == 200
    a = await (await client.get(f"/api/actions/{aid}")).json()
    assert a["resumed_by"] is not None
    assert (await client.post(f"/api/actions/{aid}/resume")).status == 409
