"""Generated requests against a real healer over HTTP: no 5xx, no hang, nothing half-written.

schemathesis generates requests for every operation of the healer's own OpenAPI document
(`GET /api/openapi.json`), valid ones and invalid ones; hypothesis generates Alertmanager
payloads whose labels, annotations and fingerprints are any text at all (control
characters, NUL, lone surrogates, bidi overrides). All of them carry the configured token,
so they reach the handlers. A request counts as a hang when no answer (headers, for a
followed log) comes within 15 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.support.faults import COUNTS, RestartableHealer, report
from tests.support.ingest_helpers import AUTH, payload, rows, with_alert, write_config

FUZZ_PASSWORD = "fuzz-password-1"
FUZZ_AUTH = {
    "Authorization": "Basic " + base64.b64encode(f"fuzz:{FUZZ_PASSWORD}".encode()).decode()
}
ROLES = ["post_alerts", "approve"]

HANG = 15.0

RULES = """\
rules:
  - name: fuzz-approve
    match: {{alertname: FuzzSeed}}
    approval: true
    steps:
      - name: echo
        script: {{argv: ["{py}", -c, "print('seeded')"]}}
  - name: fuzz-any
    match_re: {{alertname: 'Fuzz.+'}}
    steps:
      - name: echo
        script: {{argv: [/bin/cat]}}
"""


@pytest.fixture
def healer(journal_dsn: str, tmp_path: Path) -> Iterator[RestartableHealer]:
    config = write_config(
        tmp_path,
        journal_dsn,
        rules=RULES.format(py=sys.executable),
        # Fuzzed logins are wrong guesses: without a high brake the token itself would get 429.
        healer={
            "auth": {
                "bearer_token": AUTH["Authorization"][7:],
                # One credential that may do everything, so that every operation is fuzzed
                # past its role check (Alertmanager's token may only post alerts).
                "users": [{"name": "fuzz", "password": FUZZ_PASSWORD, "roles": ROLES}],
                "max_failures": 10**9,
                "max_failures_total": 10**9,
            }
        },
    )
    h = RestartableHealer(config, tmp_path / "healer.log")
    h.start()
    # Actions for the id-taking operations to find: some awaiting approval, some done.
    for i in range(6):
        name = "FuzzSeed" if i % 2 else "FuzzDone"
        body = with_alert(
            payload("firing_stale_rows"), labels={"alertname": name}, fingerprint=f"seed{i}"
        )
        resp = requests.post(h.url + "/alerts", json=body, headers=FUZZ_AUTH, timeout=HANG)
        assert resp.status_code == 200, resp.text
    yield h
    h.stop()


class Tally:
    """What the healer answered; every 5xx and hang with the request that caused it."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.bad: list[str] = []

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.bad)

    def saw(self, status: int, what: str) -> None:
        self.statuses[status] += 1
        if status >= 500:
            self.bad.append(f"{status} for {what}")


def _schemathesis(h: RestartableHealer, tally: Tally, budget: int) -> None:
    doc = requests.get(h.url + "/api/openapi.json", headers=FUZZ_AUTH, timeout=HANG).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot use: {result.err()}"
        operations.append(result.ok())
    session = requests.Session()
    target = tally.sent + budget
    rounds = 0
    # Operations with few distinct requests (GET /healthz) run out early; go round again
    # until the budget is spent, each round with fresh random data.
    while tally.sent < target and rounds < 50:
        rounds += 1
        for op in operations:
            raw = op.definition.raw
            # An operation without parameters or a body has no invalid request to make.
            negative = bool(raw.get("parameters") or raw.get("requestBody"))
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negative else [])
            for mode in modes:
                left = target - tally.sent
                if left <= 0:
                    return
                share = max(1, min(left, budget // (2 * len(operations))))
                if (op.method.upper(), op.path) == ("POST", "/login"):
                    share = min(share, 5)  # a wrong login is answered after 0.5 s on purpose
                strategy = op.as_strategy(generation_mode=mode)

                @settings(
                    max_examples=share,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def run(case: Any) -> None:
                    what = f"{case.method} {case.formatted_path} ({case.as_curl_command()[:300]})"
                    try:
                        resp = case.call(
                            base_url=h.url,
                            session=session,
                            headers=FUZZ_AUTH,
                            timeout=HANG,
                            stream=True,  # a followed log answers headers, then streams
                            allow_redirects=False,
                        )
                    except requests.exceptions.InvalidHeader:
                        return  # requests refuses to send such a header: nothing was sent
                    except requests.RequestException as exc:
                        tally.bad.append(f"no answer ({type(exc).__name__}) for {what}")
                        return
                    tally.saw(resp.status_code, what)

                # Some parameter schemas leave nothing invalid to generate either.
                with contextlib.suppress(Unsatisfiable):
                    run()


label_text = st.text(max_size=60)


@st.composite
def notifications(draw: st.DrawFn) -> dict[str, Any]:
    labels = draw(st.dictionaries(label_text, label_text, max_size=5))
    labels["alertname"] = draw(st.sampled_from(["FuzzAny", "TaskmedicStaleRows"]) | label_text)
    alert = {
        "status": draw(st.sampled_from(["firing", "resolved"])),
        "labels": labels,
        "annotations": draw(st.dictionaries(label_text, label_text, max_size=3)),
        "startsAt": draw(st.sampled_from(["2024-05-14T09:21:47Z", "0001-01-01T00:00:00Z"]))
        if draw(st.booleans())
        else draw(st.datetimes()).isoformat() + "Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": draw(label_text),
        "fingerprint": draw(st.text(min_size=1, max_size=40)),
    }
    body = {**payload("firing_stale_rows"), "alerts": [alert], "status": alert["status"]}
    body["groupKey"] = draw(label_text)
    return body


def _hypothesis(h: RestartableHealer, tally: Tally, budget: int) -> None:
    session = requests.Session()

    @settings(
        max_examples=budget, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=notifications())
    def run(body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()  # lone surrogates go out as \ud800 escapes
        try:
            resp = session.post(
                h.url + "/alerts",
                data=data,
                headers={**FUZZ_AUTH, "Content-Type": "application/json"},
                timeout=HANG,
            )
        except requests.RequestException as exc:
            tally.bad.append(f"no answer ({type(exc).__name__}) for {data[:300]!r}")
            return
        tally.saw(resp.status_code, f"POST /alerts {data[:300]!r}")

    run()


def _half_written(journal: str) -> list[tuple[Any, ...]]:
    """Notifications whose alerts are not all recorded, and actions without their alert."""
    return rows(
        journal,
        "SELECT n.id, jsonb_array_length(n.payload->'alerts'), count(a.id)"
        " FROM notifications n LEFT JOIN alerts a ON a.notification_id = n.id"
        " GROUP BY n.id HAVING jsonb_array_length(n.payload->'alerts') <> count(a.id)",
    )


@pytest.mark.timeout(120 + COUNTS.fuzz_requests // 10)
def test_generated_requests_get_no_5xx_no_hang_and_leave_nothing_half_written(
    healer: RestartableHealer, journal_dsn: str
) -> None:
    tally = Tally()
    _schemathesis(healer, tally, COUNTS.fuzz_requests * 7 // 10)
    _hypothesis(healer, tally, COUNTS.fuzz_requests - tally.sent)
    alive = healer.proc is not None and healer.proc.poll() is None
    half = _half_written(journal_dsn)
    recorded = rows(journal_dsn, "SELECT count(*) FROM alerts")[0][0]
    report(
        "fuzzing",
        requests=tally.sent,
        answers=dict(sorted(tally.statuses.items())),
        server_errors_or_hangs=len(tally.bad),
        alerts_recorded=recorded,
        half_written=len(half),
    )
    assert tally.bad == [], "\n".join(tally.bad[:10]) + "\n" + healer.output()[-3000:]
    assert alive, healer.output()[-3000:]
    assert tally.sent >= COUNTS.fuzz_requests
    assert half == []
