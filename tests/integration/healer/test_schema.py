"""`healer/journal/schema.sql` is the schema the migrations build: applied to an empty database
it gives the same tables, columns, constraints, indexes, sequences, views, triggers, types and
functions (with their bodies) as every migration applied in order.

The comparison reads PostgreSQL's catalogs rather than `pg_dump`'s text, so it needs no client
binaries of the server's version and works the same on the embedded server."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from importlib import resources
from typing import LiteralString

import psycopg
import pytest

from healer.journal import migrate
from tests.services import PostgresServer

# The migrations' own bookkeeping, created by migrate.upgrade, not by a migration.
BOOKKEEPING = "taskmedic_migrations"

# Each query yields rows of one kind of object of the public schema, as text.
CATALOG: dict[str, LiteralString] = {
    "column": """
        SELECT c.relname,
               lpad((row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum))::text, 3, '0'),
               a.attname,
               format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
               coalesce('DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), ''),
               a.attidentity, a.attgenerated
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped AND c.relname <> %(skip)s
    """,
    "constraint": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid), k.condeferrable,
               k.condeferred
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = k.connamespace
        WHERE n.nspname = 'public' AND c.relname <> %(skip)s
    """,
    "index": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> %(skip)s
    """,
    "sequence": """
        SELECT sequencename, data_type::text, start_value, increment_by, max_value, cycle
        FROM pg_sequences WHERE schemaname = 'public'
    """,
    "view": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'
    """,
    "trigger": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal
    """,
    "type": """
        SELECT t.typname, t.typtype,
               coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                         FROM pg_enum e WHERE e.enumtypid = t.oid), '')
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')
    """,
    "function": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
    """,
    "extension": """
        SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'
    """,
}


def describe(dsn: str) -> list[str]:
    """The schema of the database, one line per object (a function's definition spans lines),
    in an order that does not depend on the order the objects were created in."""
    lines: list[str] = []
    with psycopg.connect(dsn) as conn:
        for kind, query in CATALOG.items():
            rows = conn.execute(query, {"skip": BOOKKEEPING}).fetchall()
            lines.extend(sorted(f"{kind} " + " | ".join(str(v) for v in row) for row in rows))
    return [line for text in lines for line in text.splitlines()]


@pytest.fixture
def other_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A second fresh database, for the schema file."""
    name, dsn = pg_server.create_database()
    yield dsn
    pg_server.drop_database(name)


def schema_sql() -> str:
    return (resources.files("healer.journal") / "schema.sql").read_text("utf-8")


async def test_schema_sql_is_what_the_migrations_build(pg_dsn: str, other_dsn: str) -> None:
    await migrate.upgrade(pg_dsn)
    with psycopg.connect(other_dsn, autocommit=True) as conn:
        conn.execute(schema_sql())
    migrated, written = describe(pg_dsn), describe(other_dsn)
    assert any(line.startswith("function taskmedic_ingest ") for line in migrated)
    diff = "\n".join(
        difflib.unified_diff(
            migrated, written, "the migrations", "healer/journal/schema.sql", lineterm=""
        )
    )
    assert migrated == written, "schema.sql differs from the migrations:\n" + diff


async def test_the_comparison_sees_a_difference(pg_dsn: str, other_dsn: str) -> None:
    """A column, a default or a function body that differs is a difference."""
    await migrate.upgrade(pg_dsn)
    changed = (
        schema_sql()
        .replace("dry_run             boolean NOT NULL DEFAULT false", "dry_run boolean")
        .replace("reason := 'waiting for approval'", "reason := 'approve me'")
    )
    assert changed != schema_sql()
    with psycopg.connect(other_dsn, autocommit=True) as conn:
        conn.execute(changed)
    diff = [
        line
        for line in difflib.unified_diff(describe(pg_dsn), describe(other_dsn), lineterm="")
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert any("dry_run" in line and "NOT NULL" in line for line in diff if line[0] == "-")
    assert any("approve me" in line for line in diff if line[0] == "+")
