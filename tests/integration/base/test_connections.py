"""A MySQL DSN reaches the same MariaDB database from a check and from a step."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymysql
import pytest

from exporter.base.connections import DatabaseConfig
from exporter.config import Config
from exporter.databases import Database
from healer.steps.sql import Sessions
from tests.services import need_or_skip, reachable


@pytest.fixture
def spaced_database() -> Iterator[str]:
    """A MariaDB database whose name needs a percent-escape in a DSN; its DSN, with TLS
    options a server without TLS accepts."""
    need_or_skip(reachable("127.0.0.1", 3306), "MariaDB at 127.0.0.1:3306")
    name = f"tm tls {uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield (
            f"mysql://root@127.0.0.1:3306/{name.replace(' ', '%20')}"
            "?ssl_verify_cert=false&ssl_verify_identity=false&charset=utf8mb4"
        )
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


@pytest.mark.mariadb
async def test_checks_and_steps_reach_the_same_database_on_mariadb(spaced_database: str) -> None:
    """The same DSN, TLS options and an escaped name, works for a check and for a step."""
    expected = spaced_database.split("/")[-1].split("?")[0].replace("%20", " ")
    db = Database("shop", DatabaseConfig(dsn=spaced_database))
    try:
        assert (await db.fetch("SELECT DATABASE()", 5.0)).rows == [(expected,)]
    finally:
        db.close()
    config = Config.model_validate({"databases": {"shop": {"dsn": spaced_database}}})
    sessions = Sessions(config, shared=False, dry_run=False)
    outcome = await sessions.execute("shop", "SELECT DATABASE()", {}, 5.0)
    assert outcome.returned == [expected]
