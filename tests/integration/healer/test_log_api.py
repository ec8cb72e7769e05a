"""`GET /api/actions/{id}/log`: the whole log as text, and the live follow as Server-Sent Events;
with steps on other hosts every line carries its host (here and in the actions API)."""

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

from healer import log_api
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


async def test_whole_log_is_the_chunks_in_order_narrowed_by_stream_and_step(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """The text log is every chunk in id order; ?stream= and ?step= keep only theirs."""
    aid = await create_action(journal_conn, steps=2)
    await append_chunk(journal_conn, aid, "one\n")
    await append_chunk(journal_conn, aid, "warn\n", stream="stderr")
    await append_chunk(journal_conn, aid, "two\n")
    await append_chunk(journal_conn, aid, "three\n", step=1)

    resp = await client.get(f"/api/actions/{aid}/log")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await resp.text() == "one\nwarn\ntwo\nthree\n"
    resp = await client.get(f"/api/actions/{aid}/log", params={"stream": "stdout"})
    assert await resp.text() == "one\ntwo\nthree\n"
    resp = await client.get(f"/api/actions/{aid}/log", params={"stream": "stderr"})
    assert await resp.text() == "warn\n"
    resp = await client.get(f"/api/actions/{aid}/log", params={"step": "1"})
    assert await resp.text() == "three\n"
    resp = await client.get(f"/api/actions/{aid}/log", params={"step": "0", "stream": "stdout"})
    assert await resp.text() == "one\ntwo\n"


async def test_non_utf8_bytes_show_as_replacement_and_split_characters_stay_whole(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Invalid bytes read as U+FFFD, never an error; a € split over two chunks stays a €."""
    aid = await create_action(journal_conn)
    euro = "€".encode()
    await append_chunk(journal_conn, aid, b"bad \xff\xfe byte\n")
    await append_chunk(journal_conn, aid, b"price 5" + euro[:1])
    await append_chunk(journal_conn, aid, b"other stream\n", stream="stderr")
    await append_chunk(journal_conn, aid, euro[1:] + b"\n")
    await append_chunk(journal_conn, aid, b"cut " + euro[:2])  # the step ended mid-character

    text = await (await client.get(f"/api/actions/{aid}/log")).text()
    assert text == "bad \ufffd\ufffd byte\nprice 5other stream\n€\ncut \ufffd"


async def test_unknown_action_is_404_and_bad_parameters_are_400(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Client mistakes get a 4xx naming the parameter, never a 500."""
    aid = await create_action(journal_conn)
    assert (await client.get("/api/actions/999999/log")).status == 404
    resp = await client.get("/api/actions/999999/log", params={"follow": "1"})
    assert resp.status == 404
    resp = await client.get(f"/api/actions/{aid}/log", params={"stream": "stdin"})
    assert resp.status == 400
    assert "stream" in await resp.text()
    resp = await client.get(f"/api/actions/{aid}/log", params={"step": "-1"})
    assert resp.status == 400
    assert "step" in await resp.text()
    # Beyond the journal's integer: was a 500 (found by tests/faults/test_fuzz_api.py).
    for follow in ("0", "1"):
        params = {"step": str(2**31), "follow": follow}
        resp = await client.get(f"/api/actions/{aid}/log", params=params)
        assert resp.status == 400, await resp.text()
        assert "step" in await resp.text()
    resp = await client.get(
        f"/api/actions/{aid}/log",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "x1"},
    )
    assert resp.status == 400
    assert "Last-Event-ID" in await resp.text()


async def test_follow_streams_chunks_written_after_connecting_then_ends(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """A follower gets each new chunk as an event (id, stream, text) and `end` when it ends."""
    aid = await create_action(journal_conn, steps=2)
    first = await append_chunk(journal_conn, aid, "before connect\n")
    resp = await client.get(f"/api/actions/{aid}/log", headers={"Accept": "text/event-stream"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = read_events(resp)
    assert await next_event(events) == Event("step", json.dumps({"step": 0}), None)
    assert await next_event(events) == Event("stdout", "before connect\n", str(first))

    c2 = await append_chunk(journal_conn, aid, "to stderr\n", stream="stderr")
    assert await next_event(events) == Event("stderr", "to stderr\n", str(c2))
    c3 = await append_chunk(journal_conn, aid, b"line\r\nno newline \xff", step=1)
    assert await next_event(events) == Event("step", json.dumps({"step": 1}), None)
    assert await next_event(events) == Event("stdout", "line\nno newline \ufffd", str(c3))

    await set_state(journal_conn, aid, "succeeded")
    assert await next_event(events) == Event("end", json.dumps({"state": "succeeded"}), None)
    assert await resp.content.read() == b""  # the server closed the stream


async def test_resume_by_last_event_id_has_no_gap_and_no_repeat(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Output written while a follower was away arrives after it reconnects, exactly once."""
    aid = await create_action(journal_conn)
    ids = [await append_chunk(journal_conn, aid, f"line {i}\n") for i in range(3)]
    resp = await client.get(f"/api/actions/{aid}/log", params={"follow": "1"})
    events = read_events(resp)
    got = [await next_event(events) for _ in range(4)]  # step marker + 3 lines
    assert [e.id for e in got if e.event == "stdout"] == [str(i) for i in ids]
    last_id = got[-1].id
    resp.close()  # the reader goes away (a phone locks, a proxy drops the connection)

    ids += [await append_chunk(journal_conn, aid, f"line {i}\n") for i in range(3, 6)]
    resp = await client.get(
        f"/api/actions/{aid}/log",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(last_id)},
    )
    events = read_events(resp)
    assert (await next_event(events)).event == "step"
    for i in range(3, 5):
        e = await next_event(events)
        assert (e.id, e.data) == (str(ids[i]), f"line {i}\n")
    # Live chunks keep coming on the resumed stream, after what it caught up on.
    ids.append(await append_chunk(journal_conn, aid, "line 6\n"))
    e = await next_event(events)
    assert (e.id, e.data) == (str(ids[5]), "line 5\n")
    e = await next_event(events)
    assert (e.id, e.data) == (str(ids[6]), "line 6\n")
    await set_state(journal_conn, aid, "failed")
    assert (await next_event(events)).data == json.dumps({"state": "failed"})


async def test_following_a_finished_action_replays_it_and_ends(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """A finished action's stream is its whole log then `end`, filtered like the text."""
    aid = await create_action(journal_conn)
    await append_chunk(journal_conn, aid, "out\n")
    err = await append_chunk(journal_conn, aid, "err\n", stream="stderr")
    await set_state(journal_conn, aid, "failed")
    resp = await client.get(f"/api/actions/{aid}/log", params={"follow": "1", "stream": "stderr"})
    events = [e async for e in read_events(resp)]
    assert events == [
        Event("step", json.dumps({"step": 0}), None),
        Event("stderr", "err\n", str(err)),
        Event("end", json.dumps({"state": "failed"}), None),
    ]


async def test_interrupted_action_being_retried_keeps_the_stream_open(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """`interrupted` on the way back to `pending` (a retry) is not the end; given up, it is."""
    aid = await create_action(journal_conn)
    resp = await client.get(f"/api/actions/{aid}/log", params={"follow": "1"})
    events = read_events(resp)
    await set_state(journal_conn, aid, "interrupted")
    await set_state(journal_conn, aid, "running")
    c = await append_chunk(journal_conn, aid, "second attempt\n")
    assert (await next_event(events)).event == "step"
    assert (await next_event(events)).id == str(c)
    await set_state(journal_conn, aid, "interrupted")
    await journal_conn.execute("UPDATE actions SET finished_at = now() WHERE id = %s", (aid,))
    await journal_conn.execute("SELECT pg_notify('taskmedic_state', %s)", (str(aid),))
    assert await next_event(events) == Event("end", json.dumps({"state": "interrupted"}), None)


async def test_a_follower_that_disconnects_is_forgotten(
    client: Client, journal_conn: psycopg.AsyncConnection[Any]
) -> None:
    """Closing the connection frees the follower at once, even when no output comes."""
    aid = await create_action(journal_conn)
    hub_slot = client.app[log_api.LOG_HUB]
    resp = await client.get(f"/api/actions/{aid}/log", params={"follow": "1"})
    assert resp.status == 200
    async with asyncio.timeout(10):
        while hub_slot.hub is None or hub_slot.hub.followed != 1:
            await asyncio.sleep(0.02)
    resp.close()
    async with asyncio.timeout(10):
        while hub_slot.hub.followed != 0:
            await asyncio.sleep(0.02)


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
