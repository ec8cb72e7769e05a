"""No password reaches an error a person can read: config errors name where the DSN is wrong,
and every driver or broker error is shown with the connection's secrets hidden, on the
exporter's `/` page, in `taskmedic check` and in a healer step's recorded error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from exporter.base.connections import DatabaseConfig
from exporter.base.sessions import DatabaseError, open_session
from exporter.config import Config
from exporter.runner import Runner
from exporter.web import RUNNER, create_app
from healer.plan import PlanStep, SqlSpec
from tests.acceptance.exporter.test_cli import taskmedic
from tests.services import free_port
from tests.support.exporter_helpers import config_from, pg_exec, until
from tests.support.journal_helpers import (
    StartExecutor,
    insert_action,
    plan,
    state_in,
    steps,
)

SECRET = "pa%zz-s3cret"  # an unencoded %: libpq cannot parse the URL and quotes it
FILE_SECRET = "file-s3cret-771"


def with_password(dsn: str, password: str) -> str:
    """`dsn` as a URL with `password` in it, as written (the test server trusts any password)."""
    d = conninfo_to_dict(dsn)
    where = f"{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}"
    return f"postgresql://{d.get('user', 'postgres')}:{password}@{where}/{d['dbname']}"


def echoing(secret: str) -> str:
    """A query whose failure message quotes `secret`, as a driver error quotes data."""
    return f"SELECT '{secret}'::int, now()"


def test_config_check_refuses_an_unparsable_dsn_naming_where_not_what(tmp_path: Path) -> None:
    """The password comes from the environment; the error gives file, line and key only."""
    path = tmp_path / "taskmedic.yaml"
    path.write_text(
        "databases:\n"
        "  app:\n"
        '    dsn: "postgresql://app:${APP_PASSWORD}@127.0.0.1/app"\n'
        "  shop:\n"
        '    dsn: "postgresql://app:p@ss@127.0.0.1/app"\n'
    )
    out = taskmedic("config", "check", "--config", str(path), env={"APP_PASSWORD": SECRET})
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{path}:3: databases.app.dsn: " in out.stderr
    assert f"{path}:5: databases.shop.dsn: " in out.stderr
    assert "%25" in out.stderr
    assert "%40" in out.stderr
    for secret in (SECRET, "pa%zz", "p@ss", "ss@127"):
        assert secret not in out.stdout + out.stderr


def test_a_driver_error_quoting_the_password_shows_it_masked(pg_dsn: str) -> None:
    """A DSN the driver refuses (validation bypassed): its parse error quotes the password."""
    config = DatabaseConfig.model_construct(
        dsn=SecretStr(with_password(pg_dsn, SECRET)), password_file=None, connect_timeout=2.0
    )
    with pytest.raises(DatabaseError) as caught:
        open_session(config, "app", read_only=True, read_timeout=5.0, application_name="t")
    assert "invalid percent-encoded token" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in caught.value.detail


async def test_check_errors_on_the_landing_page_never_show_a_secret(
    pg_dsn: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """The DSN's password and the password file's content are hidden in the public `/` page,
    even when the database's own message quotes them."""
    secret_file = tmp_path / "pw"
    secret_file.write_text(FILE_SECRET + "\n")
    dsn = with_password(pg_dsn, "dsn-s3cret-55")
    data = {
        "databases": {"app": {"dsn": dsn, "password_file": str(secret_file)}},
        "exporter": {"interval": "1s"},
        "checks": [
            {"name": n, "type": "stale_status", "database": "app", "max_age": "1m", "query": q}
            for n, q in (("a", echoing("dsn-s3cret-55")), ("b", echoing(FILE_SECRET)))
        ],
    }
    client = await aiohttp_client(create_app(config_from(tmp_path, data)))
    runner: Runner = client.app[RUNNER]
    await until(lambda: all(s.up is False for s in runner.states), 10, "both checks to fail")
    page = await (await client.get("/")).text()
    assert page.count("invalid input syntax for type integer") == 2
    assert "dsn-s3cret-55" not in page
    assert FILE_SECRET not in page
    for state in runner.states:
        assert state.error is not None
        assert "***" in state.error


def test_taskmedic_check_never_prints_a_secret(pg_dsn: str, tmp_path: Path) -> None:
    """`taskmedic check`: a failing query and an unreachable broker, no password in sight."""
    pg_exec(pg_dsn, "CREATE TABLE timeline (id int, celery_task_id text, updated_at timestamptz)")
    broker = f"redis://:broker%40s3cret@127.0.0.1:{free_port()}/0"
    data = {
        "databases": {"app": {"dsn": with_password(pg_dsn, "dsn-s3cret-55")}},
        "celery": {"main": {"broker": broker, "backend": broker, "inspect_timeout": "0.5s"}},
        "checks": [
            {
                "name": "cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": echoing("dsn-s3cret-55"),
            },
            {
                "name": "timelines",
                "type": "orphan_tasks",
                "database": "app",
                "celery": "main",
                "query": "SELECT id, celery_task_id, updated_at FROM timeline",
            },
        ],
    }
    pg_exec(pg_dsn, "INSERT INTO timeline VALUES (1, 'never-sent', now() - interval '1 hour')")
    path = tmp_path / "taskmedic.yaml"
    path.write_text(yaml.safe_dump(data))
    out = taskmedic("check", "--config", str(path), "--json")
    assert out.returncode == 2, out.stdout + out.stderr
    errors = {c["check"]: c["error"] for c in json.loads(out.stdout)["checks"]}
    assert "invalid input syntax" in errors["cache"]
    assert "unreachable" in errors["timelines"]
    for secret in ("dsn-s3cret-55", "broker%40s3cret", "broker@s3cret"):
        assert secret not in out.stdout + out.stderr


async def test_a_failing_sql_step_records_no_secret(
    journal_dsn: str, executors: StartExecutor, tmp_path: Path
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(FILE_SECRET)
    config = Config.model_validate(
        {"databases": {"app": {"dsn": journal_dsn, "password_file": str(secret_file)}}}
    )
    await executors(config)
    step = PlanStep(
        name="echo",
        kind="sql",
        sql=SqlSpec(database="app", query=f"UPDATE steps SET idx = '{FILE_SECRET}'::int"),
    )
    action_id = await insert_action(journal_dsn, plan(step))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed")
    assert row["state"] == "failed"
    (recorded,) = await steps(journal_dsn, action_id)
    assert "invalid input syntax" in recorded["error"]
    assert FILE_SECRET not in recorded["error"]
    assert FILE_SECRET not in (row["reason"] or "")
