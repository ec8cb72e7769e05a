"""POST /alerts through a journal restart and bodies at the edge of JSON: never a 5xx the
client did not deserve, never a half-written notification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient

from healer.app import create_app
from tests.services import wait_for
from tests.support.ingest_helpers import AUTH, config_for, journal_counts, payload, with_alert

Client = TestClient[Any, Any]


async def _client(aiohttp_client: Any, journal_dsn: str, tmp_path: Path) -> Client:
    app = create_app(config_for(tmp_path, journal_dsn), dsn=journal_dsn, run_executor=False)
    client: Client = await aiohttp_client(app)
    return client


def _backends(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        ]


async def test_connections_the_journal_dropped_while_idle_cost_no_503(
    aiohttp_client: Any, journal_dsn: str, tmp_path: Path
) -> None:
    """The journal restarts between two alerts (every connection of the pool is terminated
    while idle): the next alert is recorded at once, on a fresh connection."""
    client = await _client(aiohttp_client, journal_dsn, tmp_path)
    resp = await client.post("/alerts", json=payload("firing_stale_rows"), headers=AUTH)
    assert resp.status == 200
    idle = _backends(journal_dsn)
    assert idle, "the pool keeps a connection open"
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (idle,))
    wait_for(lambda: not set(idle) & set(_backends(journal_dsn)), 10, 0.05, "backends to exit")

    again = with_alert(payload("firing_stale_rows"), startsAt="2024-05-14T09:40:00Z")
    resp = await client.post("/alerts", json=again, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert journal_counts(journal_dsn)["notifications"] == 2


async def test_a_number_beyond_a_double_is_400_and_nothing_recorded(
    aiohttp_client: Any, journal_dsn: str, tmp_path: Path
) -> None:
    """1e999 is valid JSON grammar but no JSON value the journal can hold (it would become
    infinity): the client hears 400, not 500."""
    client = await _client(aiohttp_client, journal_dsn, tmp_path)
    body = json.dumps(payload("firing_stale_rows"))[:-1] + ', "extra": 1e999}'
    resp = await client.post("/alerts", data=body.encode(), headers=AUTH)
    assert resp.status == 400
    assert "number is infinity when parsed as double" in (await resp.json())["error"]
    assert journal_counts(journal_dsn)["notifications"] == 0
    tiny = json.dumps(payload("firing_stale_rows"))[:-1] + ', "extra": 1e-999}'
    resp = await client.post("/alerts", data=tiny.encode(), headers=AUTH)
    assert resp.status == 200


async def test_escaped_text_is_stored_as_sent_and_nul_is_still_refused(
    aiohttp_client: Any, journal_dsn: str, tmp_path: Path
) -> None:
    """Alertmanager escapes &, < and > as \\u0026…; such a body is stored as sent, while an
    escaped NUL anywhere (even in a field the healer ignores) is still a 400."""
    client = await _client(aiohttp_client, journal_dsn, tmp_path)
    body = payload("firing_stale_rows")
    body["alerts"][0]["annotations"]["summary"] = "a < b & c > d, é"
    text = json.dumps(body).replace("<", "\\u003c").replace("&", "\\u0026").replace(">", "\\u003e")
    resp = await client.post("/alerts", data=text.encode(), headers=AUTH)
    assert resp.status == 200
    with psycopg.connect(journal_dsn) as conn:
        row = conn.execute("SELECT annotations->>'summary' FROM alerts").fetchone()
    assert row == ("a < b & c > d, é",)
    nul = json.dumps(payload("firing_stale_rows"))[:-1] + ', "extra": {"k": "x\\u0000"}}'
    resp = await client.post("/alerts", data=nul.encode(), headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["path"] == "$.extra.k"
