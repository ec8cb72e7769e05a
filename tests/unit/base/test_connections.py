"""A MySQL DSN means the same to a check and to a step: TLS options and escapes included.

The exporter's checks and the healer's `sql` and `repair` steps reach a user's database through
one set of driver arguments. A DSN with `?ssl_ca=...` must keep TLS for both, and a database
name written with percent-escapes must name the same database for both.
"""

from __future__ import annotations

from typing import Any

import pymysql
import pytest

from exporter.base.connections import DatabaseConfig, mysql_connect_args
from exporter.config import Config
from exporter.databases import Database
from exporter.errors import CheckUnknown
from healer.errors import StepFailed
from healer.steps.sql import Sessions

TLS_DSN = (
    "mysql://app:p%40ss@db.example:3307/shop%20floor"
    "?ssl_ca=/etc/ssl/ca.pem&ssl_cert=/etc/ssl/client.pem&ssl_key=/etc/ssl/client.key"
    "&ssl_verify_cert=false"
)
TLS_ARGS = {
    "ssl_ca": "/etc/ssl/ca.pem",
    "ssl_cert": "/etc/ssl/client.pem",
    "ssl_key": "/etc/ssl/client.key",
    "ssl_verify_cert": False,
}


def test_the_driver_arguments_of_a_mysql_dsn_keep_its_tls_options_and_decode_escapes() -> None:
    args = mysql_connect_args(DatabaseConfig(dsn=TLS_DSN))
    assert args | TLS_ARGS == args
    assert args["database"] == "shop floor"
    assert args["password"] == "p@ss"
    assert (args["host"], args["port"], args["user"]) == ("db.example", 3307, "app")


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every pymysql.connect() call's keyword arguments; each connection is refused."""
    calls: list[dict[str, Any]] = []

    def refuse(**kwargs: Any) -> None:
        calls.append(kwargs)
        raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server (refused)")

    monkeypatch.setattr(pymysql, "connect", refuse)
    return calls


async def test_a_check_connects_with_the_dsn_tls_options(connects: list[dict[str, Any]]) -> None:
    db = Database("shop", DatabaseConfig(dsn=TLS_DSN))
    try:
        with pytest.raises(CheckUnknown):
            await db.fetch("SELECT 1", 1.0)
    finally:
        db.close()
    (args,) = connects
    assert args | TLS_ARGS == args
    assert args["database"] == "shop floor"


async def test_a_sql_or_repair_step_connects_with_the_dsn_tls_options(
    connects: list[dict[str, Any]],
) -> None:
    """`sql`, `repair` and SQL undo steps all open their connections through `Sessions`."""
    config = Config.model_validate({"databases": {"shop": {"dsn": TLS_DSN}}})
    sessions = Sessions(config, shared=False, dry_run=False)
    with pytest.raises(StepFailed, match="cannot connect to database shop"):
        await sessions.execute("shop", "UPDATE jobs SET status = 'x'", {}, 5.0)
    (args,) = connects
    assert args | TLS_ARGS == args
    assert args["database"] == "shop floor"
