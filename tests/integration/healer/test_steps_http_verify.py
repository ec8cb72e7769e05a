"""The `http`, `verify` and `repair` (http, write database) steps, run by a real executor on a
real journal against real HTTP servers on 127.0.0.1 and real PostgreSQL databases."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from exporter.config import Config
from healer.plan import (
    REPAIR_KEY,
    BasicAuthSpec,
    HttpSpec,
    PlanStep,
    RepairSpec,
    VerifySpec,
)
from tests.services import PostgresServer
from tests.support.journal_helpers import (
    StartExecutor,
    insert_action,
    output,
    plan,
    state_in,
    steps,
)

SECRET = "s3cret-Pa55"


@dataclass
class Api:
    """A real HTTP server standing in for an application's API; it records every request."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, Any]] = field(default_factory=list)  # popped per request
    metrics: list[str] = field(default_factory=list)  # /metrics bodies, the last one repeats


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    holder: list[Api] = []

    async def any_request(request: web.Request) -> web.StreamResponse:
        state = holder[0]
        if request.path == "/metrics":
            body = state.metrics.pop(0) if len(state.metrics) > 1 else state.metrics[0]
            return web.Response(text=body)
        raw = await request.read()
        state.seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "json": json.loads(raw) if raw else None,
            }
        )
        status, answer = state.answers.pop(0) if state.answers else (200, {"err": ""})
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    holder.append(Api(f"http://127.0.0.1:{port}"))
    yield holder[0]
    await runner.cleanup()


def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "api-password"
    path.write_text(SECRET + "\n")
    return str(path)


def http_step(spec: HttpSpec) -> PlanStep:
    return PlanStep(name="call the app", kind="http", http=spec)


async def everything_recorded(journal_dsn: str, action_id: int) -> str:
    """All the journal holds of an action, as text: where a secret must never be."""
    async with await psycopg.AsyncConnection.connect(journal_dsn) as conn:
        cur = await conn.execute(
            "SELECT a::text, coalesce((SELECT json_agg(s)::text FROM steps s"
            " WHERE s.action_id = a.id), '') FROM actions a WHERE a.id = %s",
            (action_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    logs = await output(journal_dsn, action_id, "system")
    return str(row[0]) + str(row[1]) + logs.decode()


async def test_an_http_step_sends_the_request_with_secrets_read_from_files(
    journal_dsn: str, executors: StartExecutor, api: Api, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("Bearer tok-123\n")
    spec = HttpSpec(
        method="PUT",
        url=f"{api.url}/ibex/v1/task/7/action",
        headers={"X-Origin": "taskmedic"},
        header_files={"X-Api-Token": str(token)},
        basic_auth=BasicAuthSpec(username="user001", password_file=secret_file(tmp_path)),
        body={"action": "cancel"},
        expect_status=[200],
        expect_json={"err": ""},
    )
    await executors(Config())
    action_id = await insert_action(journal_dsn, plan(http_step(spec)))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "succeeded", row["reason"]
    (req,) = api.seen
    assert (req["method"], req["path"], req["json"]) == (
        "PUT",
        "/ibex/v1/task/7/action",
        {"action": "cancel"},
    )
    assert req["headers"]["X-Api-Token"] == "Bearer tok-123"
    assert req["headers"]["X-Origin"] == "taskmedic"
    expected = base64.b64encode(f"user001:{SECRET}".encode()).decode()
    assert req["headers"]["Authorization"] == f"Basic {expected}"
    (step,) = await steps(journal_dsn, action_id)
    assert step["result"]["status"] == 200
    assert step["result"]["answer"] == {"err": ""}
    recorded = await everything_recorded(journal_dsn, action_id)
    assert SECRET not in recorded
    assert "tok-123" not in recorded


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((200, {"err": "record not found"}), "err is 'record not found', expected ''"),
        ((500, {"err": ""}), "status 500, expected 200"),
    ],
)
async def test_a_wrong_answer_fails_the_step_and_keeps_the_answer(
    journal_dsn: str,
    executors: StartExecutor,
    api: Api,
    answer: tuple[int, Any],
    reason: str,
) -> None:
    api.answers.append(answer)
    spec = HttpSpec(method="PUT", url=f"{api.url}/x", expect_status=[200], expect_json={"err": ""})
    await executors(Config())
    action_id = await insert_action(journal_dsn, plan(http_step(spec)))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert reason in step["error"]
    assert step["result"]["answer"] == answer[1]


async def test_an_unreadable_secret_file_fails_before_anything_is_sent(
    journal_dsn: str, executors: StartExecutor, api: Api, tmp_path: Path
) -> None:
    spec = HttpSpec(
        method="POST",
        url=f"{api.url}/x",
        basic_auth=BasicAuthSpec(username="u", password_file=str(tmp_path / "missing")),
    )
    await executors(Config())
    action_id = await insert_action(journal_dsn, plan(http_step(spec)))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert "cannot read the password file" in step["error"]
    assert str(tmp_path) in step["error"]
    assert api.seen == []


async def test_a_dry_run_sends_no_request(
    journal_dsn: str, executors: StartExecutor, api: Api
) -> None:
    await executors(Config())
    p = plan(http_step(HttpSpec(method="POST", url=f"{api.url}/x")), dry_run=True)
    action_id = await insert_action(journal_dsn, p)
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", "skipped")
    assert row["state"] == "skipped"
    assert "dry run" in row["reason"]
    (step,) = await steps(journal_dsn, action_id)
    assert step["state"] == "skipped"
    assert step["result"]["dry_run"] is True
    assert api.seen == []


METRICS = """\
# HELP taskmedic_celery_task_overdue 1 when the task has not succeeded on schedule.
# TYPE taskmedic_celery_task_overdue gauge
taskmedic_celery_task_overdue{{cluster="tacticalrmm",task="core.tasks.a"}} {a}
taskmedic_celery_task_overdue{{cluster="tacticalrmm",task="core.tasks.b"}} 1.0
"""


def verify_step(api: Api, within: float) -> PlanStep:
    return PlanStep(
        name="the exporter agrees",
        kind="verify",
        verify=VerifySpec(
            series="taskmedic_celery_task_overdue",
            labels={"cluster": "tacticalrmm", "task": "core.tasks.a"},
            equals=0,
            within=within,
            interval=0.05,
            url=f"{api.url}/metrics",
        ),
    )


async def test_verify_waits_until_the_exporter_shows_the_fault_gone(
    journal_dsn: str, executors: StartExecutor, api: Api
) -> None:
    api.metrics += [METRICS.format(a="1.0")] * 3 + [METRICS.format(a="0.0")]
    await executors(Config())
    action_id = await insert_action(journal_dsn, plan(verify_step(api, within=30)))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
    assert row["state"] == "succeeded", row["reason"]
    (step,) = await steps(journal_dsn, action_id)
    assert step["result"]["readings"] == 4  # three readings of 1, then the 0


async def test_verify_fails_the_action_when_the_fault_stays(
    journal_dsn: str, executors: StartExecutor, api: Api
) -> None:
    api.metrics.append(METRICS.format(a="1.0"))
    await executors(Config())
    action_id = await insert_action(journal_dsn, plan(verify_step(api, within=0.5)))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    (step,) = await steps(journal_dsn, action_id)
    assert "not verified within 0.5s" in step["error"]
    assert "values [1.0]" in step["error"]


async def test_verify_reads_the_exporter_of_the_config_by_default(
    journal_dsn: str, executors: StartExecutor, api: Api
) -> None:
    """No url: the exporter at the config's exporter.listen, a wildcard read on loopback."""
    api.metrics.append(METRICS.format(a="0.0"))
    port = api.url.rsplit(":", 1)[1]
    await executors(Config.model_validate({"exporter": {"listen": f"0.0.0.0:{port}"}}))
    step = verify_step(api, within=10)
    assert step.verify is not None
    no_url = step.model_copy(update={"verify": step.verify.model_copy(update={"url": None})})
    action_id = await insert_action(journal_dsn, plan(no_url))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "succeeded", row["reason"]
    (done,) = await steps(journal_dsn, action_id)
    assert done["result"]["url"] == f"http://127.0.0.1:{port}/metrics"


# --- repair: one request per confirmed key, or SQL on a write database ----------------------

ORPHANS = "SELECT id, created_at FROM jobs WHERE state = 'running' AND NOT recorded"


def jobs_database(server: PostgresServer, rows: list[tuple[Any, ...]]) -> tuple[str, str]:
    name, dsn = server.create_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE jobs (id text PRIMARY KEY, state text, recorded bool,"
            " created_at timestamptz)"
        )
        for row in rows:
            conn.execute("INSERT INTO jobs VALUES (%s, %s, %s, now() - interval '1 hour')", row)
    return name, dsn


def repair_config(read_dsn: str, write_dsn: str | None = None) -> Config:
    databases = {"app": {"dsn": read_dsn}}
    if write_dsn is not None:
        databases["app_write"] = {"dsn": write_dsn}
    return Config.model_validate(
        {
            "databases": databases,
            "checks": [
                {
                    "name": "orphans",
                    "type": "orphan_rows",
                    "database": "app",
                    "grace": 0,
                    "query": ORPHANS,
                }
            ],
        }
    )


async def test_a_repair_by_http_calls_the_api_once_per_confirmed_key(
    journal_dsn: str,
    executors: StartExecutor,
    api: Api,
    pg_server: PostgresServer,
) -> None:
    name, dsn = jobs_database(
        pg_server, [("a/1", "running", False), ("b 2", "running", False), ("c", "running", True)]
    )
    try:
        await executors(repair_config(dsn))
        spec = RepairSpec(
            check="orphans",
            http=HttpSpec(
                method="PUT",
                url=f"{api.url}/task/{REPAIR_KEY}/action",
                body={"action": "cancel", "id": REPAIR_KEY, "note": f"job {REPAIR_KEY}"},
                expect_json={"err": ""},
            ),
        )
        step = PlanStep(name="cancel", kind="repair", repair=spec)
        action_id = await insert_action(journal_dsn, plan(step))
        row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
        assert row["state"] == "succeeded", row["reason"]
        assert sorted((r["path"], r["json"]["id"], r["json"]["note"]) for r in api.seen) == [
            ("/task/a%2F1/action", "a/1", "job a/1"),
            ("/task/b%202/action", "b 2", "job b 2"),
        ]
        (done,) = await steps(journal_dsn, action_id)
        assert sorted(done["result"]["confirmed_keys"]) == ["a/1", "b 2"]
        assert [r["status"] for r in done["result"]["requests"]] == [200, 200]
    finally:
        pg_server.drop_database(name)


async def test_a_repair_by_http_stops_at_the_first_wrong_answer(
    journal_dsn: str,
    executors: StartExecutor,
    api: Api,
    pg_server: PostgresServer,
) -> None:
    name, dsn = jobs_database(pg_server, [("1", "running", False), ("2", "running", False)])
    api.answers.append((200, {"err": "record not found"}))
    try:
        await executors(repair_config(dsn))
        spec = RepairSpec(
            check="orphans",
            http=HttpSpec(method="PUT", url=f"{api.url}/t/{REPAIR_KEY}", expect_json={"err": ""}),
        )
        action_id = await insert_action(
            journal_dsn, plan(PlanStep(name="cancel", kind="repair", repair=spec))
        )
        row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
        assert row["state"] == "failed"
        assert len(api.seen) == 1
        (done,) = await steps(journal_dsn, action_id)
        assert "record not found" in done["error"]
        assert "0 of 2 keys repaired" in done["error"]
    finally:
        pg_server.drop_database(name)


async def test_a_repair_writes_through_its_own_database_entry(
    journal_dsn: str, executors: StartExecutor, pg_server: PostgresServer
) -> None:
    """The check reads through `app` and the repair writes through `app_write`: here two
    databases, so that where each statement ran is visible."""
    rows = [("1", "running", False), ("2", "done", False)]
    read_name, read_dsn = jobs_database(pg_server, rows)
    write_name, write_dsn = jobs_database(pg_server, rows)
    try:
        await executors(repair_config(read_dsn, write_dsn))
        spec = RepairSpec(
            check="orphans",
            database="app_write",
            query="UPDATE jobs SET state = 'failed' WHERE id = ANY(%(keys)s) RETURNING id",
        )
        action_id = await insert_action(
            journal_dsn, plan(PlanStep(name="fail them", kind="repair", repair=spec))
        )
        row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=40)
        assert row["state"] == "succeeded", row["reason"]
        for dsn, want in ((read_dsn, "running"), (write_dsn, "failed")):
            with psycopg.connect(dsn) as conn:
                got = conn.execute("SELECT state FROM jobs WHERE id = '1'").fetchone()
            assert got == (want,)
        (done,) = await steps(journal_dsn, action_id)
        assert done["result"]["database"] == "app_write"
        assert done["result"]["changed_keys"] == ["1"]
    finally:
        pg_server.drop_database(read_name)
        pg_server.drop_database(write_name)
