"""Whatever a client sends, the webhook answers a clear 4xx (never a 5xx) and records nothing."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healer.app import create_app
from tests.support.ingest_helpers import AUTH, TOKEN, config_for, journal_counts, payload

Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: Any, journal_dsn: str, tmp_path: Path) -> Client:
    config = config_for(
        tmp_path,
        journal_dsn,
        healer={
            "max_body": "64KiB",
            "auth": {
                "bearer_token": TOKEN,
                "basic_auth": {"username": "am", "password": "pw"},
                "alertmanager_roles": ["post_alerts", "read"],
            },
        },
    )
    c: Client = await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))
    return c


def nothing_recorded(dsn: str) -> bool:
    return all(v == 0 for v in journal_counts(dsn).values())


async def test_missing_token_is_401_with_a_challenge_and_nothing_recorded(
    client: Client, journal_dsn: str
) -> None:
    resp = await client.post("/alerts", json=payload("firing_stale_rows"))
    assert resp.status == 401
    assert "Bearer" in resp.headers["WWW-Authenticate"]
    assert "Basic" in resp.headers["WWW-Authenticate"]
    assert nothing_recorded(journal_dsn)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"bearer {TOKEN[:-1]}",
        "Basic " + base64.b64encode(b"am:wrong").decode(),
        "Basic " + base64.b64encode(b"other:pw").decode(),
        "Basic not-base64!!",
        "Digest username=am",
        "",
    ],
)
async def test_wrong_credentials_are_401_and_nothing_recorded(
    client: Client, journal_dsn: str, header: str
) -> None:
    resp = await client.post(
        "/alerts", json=payload("firing_stale_rows"), headers={"Authorization": header}
    )
    assert resp.status == 401
    assert nothing_recorded(journal_dsn)


async def test_basic_auth_as_alertmanager_sends_it_is_accepted(
    client: Client, journal_dsn: str
) -> None:
    header = "Basic " + base64.b64encode(b"am:pw").decode()
    resp = await client.post(
        "/alerts", json=payload("firing_stale_rows"), headers={"Authorization": header}
    )
    assert resp.status == 200
    assert journal_counts(journal_dsn)["actions"] == 1


async def test_health_and_metrics_need_no_credentials_but_the_api_does(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/api/actions")).status == 401
    assert (await client.get("/api/actions", headers=AUTH)).status == 200


async def test_body_over_the_limit_is_413(client: Client, journal_dsn: str) -> None:
    big = payload("firing_stale_rows")
    big["commonAnnotations"]["description"] = "x" * (70 * 1024)
    resp = await client.post("/alerts", json=big, headers=AUTH)
    assert resp.status == 413

    async def chunks() -> Any:  # no Content-Length: the limit holds on what is read
        for _ in range(80):
            yield b" " * 1024

    resp = await client.post("/alerts", data=chunks(), headers=AUTH)
    assert resp.status == 413
    assert nothing_recorded(journal_dsn)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"not json", "$"),
        (b"[1, 2]", "$"),
        (b'{"version": 4}', "$.version"),
        (b'{"status": "firing"}', "$.version"),
        (b'{"version": "4", "status": "firing", "receiver": "r"}', "$.alerts"),
        (b'{"version": "4", "status": "burning", "receiver": "r", "alerts": []}', "$.status"),
        (b'{"version": "4", "status": "firing", "receiver": "r", "alerts": [{}]}', "$.alerts[0]"),
        (b'{"version": "4", "status": "firing", "receiver": "r", "truncatedAlerts": NaN}', "$"),
    ],
)
async def test_bad_json_or_shape_is_400_naming_the_json_path(
    client: Client, journal_dsn: str, body: bytes, path: str
) -> None:
    resp = await client.post("/alerts", data=body, headers=AUTH)
    assert resp.status == 400
    got = await resp.json()
    assert got["path"].startswith(path)
    assert nothing_recorded(journal_dsn)


async def test_bad_timestamp_names_the_alert_field(client: Client, journal_dsn: str) -> None:
    p = payload("grouped_workers_down")
    p["alerts"][2]["startsAt"] = "yesterday"
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["path"] == "$.alerts[2].startsAt"
    p["alerts"][2]["startsAt"] = "2024-05-14T10:02:46"  # no zone: ambiguous
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 400
    assert nothing_recorded(journal_dsn)


async def test_strings_the_journal_cannot_store_are_400(client: Client, journal_dsn: str) -> None:
    p = payload("firing_stale_rows")
    p["alerts"][0]["labels"]["check"] = "bad\u0000value"
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["path"] == "$.alerts[0].labels.check"
    resp = await client.post(
        "/alerts",
        data=json.dumps(payload("firing_stale_rows")).replace("exporter-1", "\\ud800"),
        headers=AUTH,
    )
    assert resp.status == 400
    assert nothing_recorded(journal_dsn)


async def test_unknown_version_is_422(client: Client, journal_dsn: str) -> None:
    p = payload("firing_stale_rows")
    p["version"] = "5"
    resp = await client.post("/alerts", json=p, headers=AUTH)
    assert resp.status == 422
    assert "version" in (await resp.json())["error"]
    assert nothing_recorded(journal_dsn)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
alert_like = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved"]) | st.text(max_size=8),
        "labels": st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4)
        | json_values,
        "startsAt": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
        | st.text(max_size=30),
        "fingerprint": st.text(max_size=20),
    },
    optional={"annotations": json_values, "endsAt": st.text(max_size=30)},
)
notification_like = st.fixed_dictionaries(
    {"version": st.just("4") | st.text(max_size=3) | json_values},
    optional={
        "status": st.sampled_from(["firing", "resolved"]) | json_values,
        "receiver": st.text(max_size=10) | json_values,
        "alerts": st.lists(alert_like | json_values, max_size=3) | json_values,
        "truncatedAlerts": st.integers() | json_values,
        "groupKey": st.text(max_size=20) | json_values,
    },
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | notification_like.map(lambda v: json.dumps(v).encode())
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
async def test_no_client_input_ever_gets_a_5xx(client: Client, body: bytes) -> None:
    """Garbage of many shapes: a 2xx or a 4xx, never a 5xx."""
    resp = await client.post("/alerts", data=body, headers=AUTH)
    assert resp.status < 500, (body, await resp.text())


@pytest.mark.parametrize(
    ("starts_at", "stored"),
    [
        ("2024-05-14T09:21:47-18:30", "2024-05-15T03:51:47+00:00"),
        ("2024-05-14T09:21:47+23:59", "2024-05-13T09:22:47+00:00"),
    ],
)
async def test_a_time_zone_offset_postgresql_does_not_take_is_recorded_in_utc(
    client: Client, journal_dsn: str, starts_at: str, stored: str
) -> None:
    """RFC 3339 allows offsets up to ±23:59, PostgreSQL only up to ±15:59: such an alert was a
    500 (found by tests/faults/test_fuzz_api.py)."""
    body = payload("firing_stale_rows")
    body["alerts"][0]["startsAt"] = starts_at
    resp = await client.post("/alerts", json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    with psycopg.connect(journal_dsn) as conn:
        (at,) = conn.execute("SELECT starts_at FROM alerts").fetchone() or (None,)
    assert at is not None
    assert at.astimezone(UTC).isoformat() == stored


async def test_a_time_that_leaves_the_calendar_in_utc_is_a_400(
    client: Client, journal_dsn: str
) -> None:
    body = payload("firing_stale_rows")
    body["alerts"][0]["startsAt"] = "0001-01-01T00:00:00+05:00"
    resp = await client.post("/alerts", json=body, headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["path"] == "$.alerts[0].startsAt"
    assert nothing_recorded(journal_dsn)


async def test_a_label_larger_than_an_index_row_is_recorded_not_refused_as_an_outage(
    aiohttp_client: Any, journal_dsn: str, tmp_path: Path
) -> None:
    """A 1 MB label made the action's rule+target too large for the journal's index: the
    insert failed and the webhook answered 503 for ever (found by
    tests/faults/test_injection.py). An operator may raise `healer.limits.label_value` that
    far; the same labels still count as the same target."""
    limits = {"label_value": "2MiB"}
    config = config_for(tmp_path, journal_dsn, healer={"max_body": "4MiB", "limits": limits})
    client: Client = await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))
    body = payload("firing_stale_rows")
    body["alerts"][0]["labels"]["huge"] = "A" * (1 << 20)
    headers = {**AUTH, "Content-Type": "application/json"}

    def sent() -> io.BytesIO:  # a stream: aiohttp warns about a large body of bytes
        return io.BytesIO(json.dumps(body).encode())

    resp = await client.post("/alerts", data=sent(), headers=headers)
    assert resp.status == 200, await resp.text()
    assert [a["state"] for a in (await resp.json())["actions"]] == ["pending"]
    body["alerts"][0]["startsAt"] = "2024-05-14T09:25:00Z"  # the same target, again
    resp = await client.post("/alerts", data=sent(), headers=headers)
    assert resp.status == 200, await resp.text()
    assert [a["state"] for a in (await resp.json())["actions"]] == ["skipped"]  # cooldown
