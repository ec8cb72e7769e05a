"""The journal schema is created and upgraded once, even by replicas starting together."""

import asyncio

import psycopg

from healer.journal import migrate


async def test_upgrade_from_empty_then_nothing_to_do(pg_dsn: str) -> None:
    assert await migrate.upgrade(pg_dsn) == [m.version for m in migrate.migrations()]
    assert await migrate.upgrade(pg_dsn) == []
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        assert await migrate.current_version(conn) == migrate.latest_version()


async def test_replicas_upgrading_at_once_apply_each_migration_once(pg_dsn: str) -> None:
    results = await asyncio.gather(*(migrate.upgrade(pg_dsn) for _ in range(5)))
    applied = [v for r in results for v in r]
    assert sorted(applied) == [m.version for m in migrate.migrations()]
