"""Creating and upgrading the journal schema, safely with several replicas starting at once.

Every upgrade runs under one PostgreSQL advisory lock, so two healers starting together apply
each migration exactly once; each file is applied in its own transaction with its version row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString

import psycopg

# Any fixed 64-bit number; it only has to be the same in every replica.
LOCK_ID = 0x7461736B6D656469  # "taskmedi"

_CREATE_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS taskmedic_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: LiteralString


def migrations() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    out = []
    folder = resources.files("healer.journal") / "migrations"
    for entry in folder.iterdir():
        m = re.match(r"^(\d{4})_([a-z0-9_]+)\.sql$", entry.name)
        if m:
            sql: LiteralString = entry.read_text(encoding="utf-8")
            out.append(Migration(int(m.group(1)), m.group(2), sql))
    return sorted(out, key=lambda m: m.version)


def latest_version() -> int:
    return migrations()[-1].version


async def current_version(conn: psycopg.AsyncConnection[Any]) -> int:
    """The applied schema version, 0 for an empty database."""
    cur = await conn.execute("SELECT to_regclass('taskmedic_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM taskmedic_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def upgrade(dsn: str) -> list[int]:
    """Apply every missing migration; returns the versions this call applied."""
    applied: list[int] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            await conn.execute(_CREATE_TABLE)
            have = await current_version(conn)
            for m in migrations():
                if m.version <= have:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO taskmedic_migrations (version, name) VALUES (%s, %s)",
                        (m.version, m.name),
                    )
                applied.append(m.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied
