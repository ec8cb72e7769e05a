"""Fixtures of the exporter tests: a MariaDB database per test, Celery monitors, the user's
Celery app and a `timeline` table of tasks (loaded by tests/conftest.py for every tier)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymysql
import pytest
from celery import Celery

from tests.celery_app import make_app
from tests.services import need_or_skip, reachable
from tests.support.celery_helpers import Monitors
from tests.support.exporter_helpers import pg_exec

MARIADB = ("127.0.0.1", 3306)


def _mariadb_admin() -> pymysql.connections.Connection:
    return pymysql.connect(
        host=MARIADB[0], port=MARIADB[1], user="root", password="", autocommit=True
    )


@pytest.fixture
def mysql_dsn() -> Iterator[str]:
    """A fresh, empty MariaDB database for this test (root, no password), dropped afterwards.

    Skips outside CI when no MariaDB listens on 127.0.0.1:3306; fails inside CI.
    """
    need_or_skip(reachable(*MARIADB), "MariaDB")
    name = f"tm_test_{uuid.uuid4().hex[:12]}"
    admin = _mariadb_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql://root@{MARIADB[0]}:{MARIADB[1]}/{name}"
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


@pytest.fixture
def monitors() -> Iterator[Monitors]:
    """Start real ClusterMonitors with `monitors(broker_url, backend=...)`; all stop after."""
    started = Monitors()
    yield started
    started.stop_all()


@pytest.fixture
def client_app(broker_url: str) -> Iterator[Celery]:
    """The user's application: sends tasks the way it always does."""
    app = make_app(broker_url)
    yield app
    app.close()


@pytest.fixture
def timeline(pg_dsn: str) -> str:
    pg_exec(
        pg_dsn,
        "CREATE TABLE timeline (id int PRIMARY KEY, status text, celery_task_id text, "
        "updated_at timestamptz NOT NULL DEFAULT now())",
    )
    return pg_dsn
