"""The test services themselves work: a fresh PostgreSQL database per test."""

import psycopg


def test_postgres_database_is_fresh_and_writable(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
