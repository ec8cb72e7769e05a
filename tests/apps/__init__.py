"""The real applications' tables, for tests that must run against what the app really has.

Each `<app>.sql` holds the app's own DDL for the tables its pack reads and writes (names,
columns and types as the app's models and migrations create them), with a header naming its
source. `create(dsn, app)` loads one into a test database.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent


def ddl(app: str) -> str:
    return (HERE / f"{app}.sql").read_text(encoding="utf-8")


def create_pg(dsn: str, app: str) -> None:
    """Create the app's tables in a PostgreSQL database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl(app).encode())


def create_mysql(dsn: str, app: str) -> None:
    """Create the app's tables in a MySQL/MariaDB database (one statement per call, as the
    driver takes them)."""
    import pymysql

    from exporter.base.connections import parse_mysql_dsn

    lines = [line for line in ddl(app).splitlines() if not line.lstrip().startswith("--")]
    statements = [s.strip() for s in "\n".join(lines).split(";\n") if s.strip()]
    conn = pymysql.connect(**parse_mysql_dsn(dsn), autocommit=True)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement.rstrip(";"))
    finally:
        conn.close()
