"""`healer.limits`: a notification that would cost far more than its size is refused with a
clear 413 or 422 naming the limit, and a flood of requests gets 503 with Retry-After; nothing
over a limit reaches the journal."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from healer.app import create_app
from tests.support.ingest_helpers import AUTH, TOKEN, config_for, journal_counts, payload

Client = TestClient[Any, Any]

LIMITS = {
    "alerts_per_notification": 5,
    "labels_per_alert": 20,
    "requests_in_flight": 1,
    "parse_in_thread_above": "1KiB",
}


@pytest.fixture
async def client(aiohttp_client: Any, journal_dsn: str, tmp_path: Path) -> Client:
    config = config_for(
        tmp_path, journal_dsn, healer={"auth": {"bearer_token": TOKEN}, "limits": LIMITS}
    )
    c: Client = await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))
    return c


def nothing_recorded(dsn: str) -> bool:
    return all(v == 0 for v in journal_counts(dsn).values())


def with_alerts(n: int) -> dict[str, Any]:
    p = payload("firing_stale_rows")
    one = p["alerts"][0]
    p["alerts"] = []
    for i in range(n):
        alert = copy.deepcopy(one)
        alert["fingerprint"] = f"{i:016x}"
        alert["labels"]["instance"] = f"exporter-{i}"
        p["alerts"].append(alert)
    return p


async def test_too_many_alerts_in_one_notification_is_413_naming_the_limit(
    client: Client, journal_dsn: str
) -> None:
    resp = await client.post("/alerts", json=with_alerts(6), headers=AUTH)
    assert resp.status == 413
    body = await resp.json()
    assert body["limit"] == "healer.limits.alerts_per_notification"
    assert body["max"] == 5
    assert body["path"] == "$.alerts"
    assert nothing_recorded(journal_dsn)
    resp = await client.post("/alerts", json=with_alerts(5), headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["alerts"] == 5


@pytest.mark.parametrize(
    ("where", "path"),
    [
        (("alerts", 2, "labels", "check"), "$.alerts[2].labels.check"),
        (("alerts", 0, "annotations", "description"), "$.alerts[0].annotations.description"),
        (("commonLabels", "check"), "$.commonLabels.check"),
    ],
)
async def test_a_label_over_8_kib_is_422_naming_the_alert_and_label(
    client: Client, journal_dsn: str, where: tuple[Any, ...], path: str
) -> None:
    """The default label_value (8 KiB) keeps every value well under the kernel's 128 KiB limit
    of one argument of a script step, and a plan near the size of what was sent."""
    p = with_alerts(3)
    target: Any = p
    for part in where[:-1]:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[where[-1]] = "é" * (4 * 1024 + 1)  # 4,097 characters, 8,194 bytes
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 422
    body = await resp.json()
    assert body["path"] == path
    assert body["limit"] == "healer.limits.label_value"
    assert body["max"] == 8 * 1024
    assert nothing_recorded(journal_dsn)


async def test_too_many_labels_on_one_alert_is_422(client: Client, journal_dsn: str) -> None:
    p = with_alerts(2)
    p["alerts"][1]["labels"].update({f"extra_{i}": "x" for i in range(20)})
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 422
    body = await resp.json()
    assert (body["path"], body["limit"]) == ("$.alerts[1].labels", "healer.limits.labels_per_alert")
    assert nothing_recorded(journal_dsn)


async def test_past_requests_in_flight_the_webhook_answers_503_with_retry_after(
    client: Client, journal_dsn: str
) -> None:
    """One notification still arriving holds the only place; the next is told to come back,
    and once the first is in, the place is free again."""
    body = orjson.dumps(with_alerts(1))
    # A client that sent its headers and part of its body, and holds the rest back.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        f"POST /alerts HTTP/1.1\r\nHost: healer\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[:10])
    await writer.drain()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        resp = await client.post("/alerts", json=with_alerts(1), headers=AUTH)
        if resp.status == 503:
            break
        assert resp.status == 200  # the held request did not reach the handler yet
        assert asyncio.get_running_loop().time() < deadline, "the held request never arrived"
        await asyncio.sleep(0.01)
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["limit"] == "healer.limits.requests_in_flight"
    writer.write(body[10:])
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200")
    resp = await client.post("/alerts", json=with_alerts(1), headers=AUTH)
    assert resp.status == 200


async def test_a_body_parsed_in_a_thread_is_recorded_like_any_other(
    client: Client, journal_dsn: str
) -> None:
    """Bodies over parse_in_thread_above (1 KiB here) are parsed off the event loop, with the
    same answer."""
    p = with_alerts(4)
    assert len(orjson.dumps(p)) > 1024
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["alerts"] == 4
    assert journal_counts(journal_dsn)["alerts"] == 4
