"""stale_status and orphan_rows on real databases, read through the exporter's own registry;
the zero-versus-absent rule; the database's clock; run_once."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.checks import run_once
from exporter.errors import CheckUnknown
from exporter.runner import Runner
from tests.support.exporter_helpers import config_from, mysql_exec, pg_exec, registry_of


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def stale_config(dsn: str, query: str, max_age: str = "10m", **extra: Any) -> dict[str, Any]:
    return {
        "databases": {"app": {"dsn": dsn}, **extra.pop("databases", {})},
        "checks": [
            {
                "name": "cache",
                "type": "stale_status",
                "database": "app",
                "max_age": max_age,
                "query": query,
            },
            *extra.pop("checks", []),
        ],
    }


@pytest.fixture
async def runner_for(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Runner]]:
    """A Runner on a config written to disk, collected by hand (`await runner.collect(name)`),
    with no Celery cluster; stopped afterwards."""
    made: list[Runner] = []

    def make(data: dict[str, Any]) -> Runner:
        runner = Runner(config_from(tmp_path, data), monitors={})
        made.append(runner)
        return runner

    yield make
    for r in made:
        await r.stop()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def status_cache(pg_dsn: str) -> str:
    pg_exec(pg_dsn, "CREATE TABLE agents_status_cache (agent_id int, updated_at timestamptz)")
    pg_exec(
        pg_dsn,
        "INSERT INTO agents_status_cache VALUES (1, now() - interval '20 minutes'), "
        "(2, now() - interval '30 minutes'), (3, now())",
    )
    return pg_dsn


async def test_stale_rows_are_counted_and_zero_after_the_cache_is_refreshed(
    status_cache: str, runner_for: Callable[[dict[str, Any]], Runner]
) -> None:
    """Rows older than max_age are counted with the oldest age; once the job that refreshes
    the cache runs again the count is 0, not the last value."""
    runner = runner_for(
        stale_config(status_cache, "SELECT agent_id, updated_at FROM agents_status_cache")
    )
    registry = registry_of(runner)
    await runner.collect("cache")
    assert sample(registry, "taskmedic_check_up", check="cache") == 1
    assert sample(registry, "taskmedic_stale_rows", check="cache") == 2
    oldest = sample(registry, "taskmedic_stale_oldest_age_seconds", check="cache")
    assert oldest is not None
    assert 1800 <= oldest < 1800 + 60

    pg_exec(status_cache, "UPDATE agents_status_cache SET updated_at = now()")
    await runner.collect("cache")
    assert sample(registry, "taskmedic_stale_rows", check="cache") == 0
    oldest = sample(registry, "taskmedic_stale_oldest_age_seconds", check="cache")
    assert oldest is not None
    assert oldest < 60


async def test_an_empty_result_is_zero_and_a_failing_database_is_absent(
    status_cache: str, runner_for: Callable[[dict[str, Any]], Runner]
) -> None:
    """Absent means unknown and nothing else: a check that finds nothing exports 0; a check
    whose database is unreachable exports no finding and check_up 0 (never a false 0, never
    the last count), while the other checks go on exporting."""
    data = stale_config(
        status_cache,
        "SELECT agent_id, updated_at FROM agents_status_cache WHERE agent_id > 100",
        databases={"gone": {"dsn": f"postgresql://app:pw@127.0.0.1:{closed_port()}/app"}},
        checks=[
            {
                "name": "elsewhere",
                "type": "stale_status",
                "database": "gone",
                "max_age": "1m",
                "query": "SELECT 1, now()",
            }
        ],
    )
    runner = runner_for(data)
    registry = registry_of(runner)
    await runner.collect("cache")
    await runner.collect("elsewhere")
    assert sample(registry, "taskmedic_stale_rows", check="cache") == 0
    assert sample(registry, "taskmedic_stale_oldest_age_seconds", check="cache") == 0
    assert sample(registry, "taskmedic_check_up", check="cache") == 1
    assert sample(registry, "taskmedic_check_up", check="elsewhere") == 0
    assert sample(registry, "taskmedic_stale_rows", check="elsewhere") is None
    assert sample(registry, "taskmedic_stale_oldest_age_seconds", check="elsewhere") is None
    assert (
        sample(registry, "taskmedic_check_last_success_timestamp_seconds", check="elsewhere")
        is None
    )
    assert sample(registry, "taskmedic_check_duration_seconds", check="elsewhere") is not None
    error = runner.state("elsewhere").error
    assert error is not None
    assert "cannot connect to database gone" in error
    assert "pw@" not in error


async def test_a_check_that_fails_after_a_count_exports_no_count(
    status_cache: str, runner_for: Callable[[dict[str, Any]], Runner]
) -> None:
    """When the query starts failing (table dropped) the earlier count disappears instead of
    lingering; the database's message is the check's error."""
    runner = runner_for(
        stale_config(status_cache, "SELECT agent_id, updated_at FROM agents_status_cache")
    )
    registry = registry_of(runner)
    await runner.collect("cache")
    assert sample(registry, "taskmedic_stale_rows", check="cache") == 2
    last_success = sample(registry, "taskmedic_check_last_success_timestamp_seconds", check="cache")
    pg_exec(status_cache, "DROP TABLE agents_status_cache")
    await runner.collect("cache")
    assert sample(registry, "taskmedic_check_up", check="cache") == 0
    assert sample(registry, "taskmedic_stale_rows", check="cache") is None
    assert (
        sample(registry, "taskmedic_check_last_success_timestamp_seconds", check="cache")
        == last_success
    )
    assert 'relation "agents_status_cache" does not exist' in (runner.state("cache").error or "")


async def test_a_writing_query_is_an_error_and_check_up_0(
    status_cache: str, runner_for: Callable[[dict[str, Any]], Runner]
) -> None:
    """A check whose query tries to write gets the database's refusal as its error."""
    runner = runner_for(
        stale_config(
            status_cache,
            "WITH d AS (DELETE FROM agents_status_cache RETURNING agent_id, updated_at) "
            "SELECT agent_id, updated_at FROM d",
        )
    )
    registry = registry_of(runner)
    await runner.collect("cache")
    assert sample(registry, "taskmedic_check_up", check="cache") == 0
    assert "read-only transaction" in (runner.state("cache").error or "")
    assert pg_exec(status_cache, "SELECT count(*) FROM agents_status_cache") == [(3,)]


async def test_ages_use_the_databases_clock_for_naive_aware_and_epoch_timestamps(
    pg_dsn: str,
) -> None:
    """Ages are the database's now() minus the row's time, whatever the column type: a naive
    `timestamp` holding UTC, a `timestamptz`, Unix seconds. NULL is stale (never refreshed);
    a timestamp in the future is simply fresh."""
    pg_exec(
        pg_dsn,
        "CREATE TABLE c (k text, naive timestamp, aware timestamptz, epoch bigint)",
    )
    pg_exec(
        pg_dsn,
        "INSERT INTO c VALUES "
        "('old', (now() AT TIME ZONE 'UTC') - interval '90 seconds', "
        " now() - interval '90 seconds', extract(epoch FROM now())::bigint - 90), "
        "('new', (now() AT TIME ZONE 'UTC') - interval '5 seconds', "
        " now() - interval '5 seconds', extract(epoch FROM now())::bigint - 5), "
        "('future', (now() AT TIME ZONE 'UTC') + interval '1 hour', "
        " now() + interval '1 hour', extract(epoch FROM now())::bigint + 3600), "
        "('never', NULL, NULL, NULL)",
    )
    for column in ("naive", "aware", "epoch"):
        config = config_from_pg(pg_dsn, f"SELECT k, {column} FROM c", max_age="60s")
        outcome = await run_once(config, "cache")
        by_key = {f.key: f for f in outcome.findings}
        assert set(by_key) == {"old", "never"}, column
        assert 89 <= by_key["old"].age_seconds < 89 + 30, column
        assert by_key["never"].since is None
        assert outcome.oldest_age_seconds == by_key["old"].age_seconds


def config_from_pg(dsn: str, query: str, max_age: str) -> Any:
    from exporter.config import Config

    return Config.model_validate(stale_config(dsn, query, max_age))


async def test_mariadb_datetime_and_timestamp_columns_age_by_the_servers_clock(
    mysql_dsn: str,
) -> None:
    """On MariaDB, a DATETIME written in UTC and a TIMESTAMP written in the server's own time
    zone both age correctly (the exporter's session runs in UTC)."""
    mysql_exec(mysql_dsn, "CREATE TABLE c (k varchar(10), dt DATETIME(6), ts TIMESTAMP(6) NULL)")
    mysql_exec(
        mysql_dsn,
        "INSERT INTO c VALUES "
        "('old', UTC_TIMESTAMP(6) - INTERVAL 90 SECOND, NOW(6) - INTERVAL 90 SECOND), "
        "('new', UTC_TIMESTAMP(6), NOW(6))",
    )
    for column in ("dt", "ts"):
        config = config_from_pg(mysql_dsn, f"SELECT k, {column} FROM c", max_age="60s")
        outcome = await run_once(config, "cache")
        assert [f.key for f in outcome.findings] == ["old"], column
        assert 89 <= outcome.findings[0].age_seconds < 89 + 30, column


# --- orphan_rows ------------------------------------------------------------------------------


@pytest.fixture
def records(pg_dsn: str) -> str:
    """ibex's two tables: a record, and its action written separately (or never)."""
    pg_exec(pg_dsn, "CREATE TABLE task_record (id bigint PRIMARY KEY, created_at timestamptz)")
    pg_exec(pg_dsn, "CREATE TABLE task_action (id bigint PRIMARY KEY)")
    pg_exec(
        pg_dsn,
        "INSERT INTO task_record VALUES (1, now() - interval '1 hour'), (2, now()), "
        "(3, now() - interval '1 hour')",
    )
    pg_exec(pg_dsn, "INSERT INTO task_action VALUES (3)")
    return pg_dsn


ORPHAN_ROWS_QUERY = (
    "SELECT r.id, r.created_at FROM task_record r "
    "LEFT JOIN task_action a ON a.id = r.id WHERE a.id IS NULL"
)


def orphan_rows_config(dsn: str, query: str = ORPHAN_ROWS_QUERY) -> dict[str, Any]:
    return {
        "databases": {"app": {"dsn": dsn}},
        "checks": [
            {
                "name": "records_without_action",
                "type": "orphan_rows",
                "database": "app",
                "grace": "1m",
                "query": query,
            }
        ],
    }


async def test_orphan_rows_need_grace_and_two_consecutive_collections(
    records: str, runner_for: Callable[[dict[str, Any]], Runner]
) -> None:
    """A record without its action counts once past grace AND seen on two collections in a
    row; the first collection knows no count yet (absent), a fresh record is within grace,
    and once the action is written the count is back to 0."""
    runner = runner_for(orphan_rows_config(records))
    registry = registry_of(runner)
    name = "records_without_action"
    await runner.collect(name)
    assert sample(registry, "taskmedic_check_up", check=name) == 1
    assert sample(registry, "taskmedic_orphan_rows", check=name) is None

    await runner.collect(name)
    assert sample(registry, "taskmedic_orphan_rows", check=name) == 1
    assert [f.key for f in runner.state(name).outcome.findings] == [1]  # type: ignore[union-attr]

    # Past grace from now on, but seen only once so far: not yet.
    pg_exec(records, "UPDATE task_record SET created_at = now() - interval '2 hours' WHERE id = 2")
    await runner.collect(name)
    assert sample(registry, "taskmedic_orphan_rows", check=name) == 1
    await runner.collect(name)
    assert sample(registry, "taskmedic_orphan_rows", check=name) == 2

    pg_exec(records, "INSERT INTO task_action VALUES (1), (2)")
    await runner.collect(name)
    assert sample(registry, "taskmedic_orphan_rows", check=name) == 0


async def test_a_failed_collection_breaks_the_chain_of_observations(
    records: str, runner_for: Callable[[dict[str, Any]], Runner]
) -> None:
    """After a failure an orphan check needs two good observations again before it counts."""
    runner = runner_for(orphan_rows_config(records))
    registry = registry_of(runner)
    name = "records_without_action"
    await runner.collect(name)
    await runner.collect(name)
    assert sample(registry, "taskmedic_orphan_rows", check=name) == 1
    pg_exec(records, "ALTER TABLE task_action RENAME TO task_action_moved")
    await runner.collect(name)
    assert sample(registry, "taskmedic_check_up", check=name) == 0
    assert sample(registry, "taskmedic_orphan_rows", check=name) is None
    pg_exec(records, "ALTER TABLE task_action_moved RENAME TO task_action")
    await runner.collect(name)
    assert sample(registry, "taskmedic_check_up", check=name) == 1
    assert sample(registry, "taskmedic_orphan_rows", check=name) is None
    await runner.collect(name)
    assert sample(registry, "taskmedic_orphan_rows", check=name) == 1


async def test_run_once_confirms_orphan_rows_with_two_looks_and_keeps_key_types(
    records: str, tmp_path: Path
) -> None:
    """run_once (what `taskmedic check` and the healer's repair use) observes twice and returns
    the database's own key values: a bigint stays an int."""
    config = config_from(tmp_path, orphan_rows_config(records))
    outcome = await run_once(config, "records_without_action", pause=0.1)
    assert outcome.confirmed
    assert [f.key for f in outcome.findings] == [1]
    assert type(outcome.findings[0].key) is int
    assert outcome.findings[0].age_seconds >= 3600


async def test_orphan_rows_without_timestamp_age_from_first_sight(
    records: str, tmp_path: Path
) -> None:
    """A query returning only keys: grace is counted from when the exporter first saw the row,
    so run_once cannot confirm it within a grace of a minute."""
    config = config_from(
        tmp_path,
        orphan_rows_config(
            records,
            "SELECT r.id FROM task_record r LEFT JOIN task_action a ON a.id = r.id "
            "WHERE a.id IS NULL",
        ),
    )
    outcome = await run_once(config, "records_without_action", pause=0.1)
    assert outcome.findings == []


async def test_run_once_raises_check_unknown_for_a_query_error(
    records: str, tmp_path: Path
) -> None:
    config = config_from(tmp_path, orphan_rows_config(records, "SELECT id FROM no_such_table"))
    with pytest.raises(CheckUnknown, match="no_such_table"):
        await run_once(config, "records_without_action", pause=0.1)
    with pytest.raises(CheckUnknown, match="no check named"):
        await run_once(config, "nope")


async def test_a_query_returning_the_wrong_columns_is_unknown(records: str, tmp_path: Path) -> None:
    config = config_from(tmp_path, orphan_rows_config(records, "SELECT 1, 2, 3"))
    with pytest.raises(CheckUnknown, match="must return 1 to 2 columns, it returned 3"):
        await run_once(config, "records_without_action", pause=0.1)
