"""The exporter over real HTTP: /metrics never waits on a database, OpenMetrics negotiation,
the landing page, /healthz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from exporter.runner import Runner
from exporter.web import RUNNER, create_app
from tests.support.exporter_helpers import config_from, parse_metrics, pg_exec, until, value


def slow_config(dsn: str) -> dict[str, Any]:
    return {
        "databases": {"app": {"dsn": dsn}},
        "exporter": {"interval": "1s"},
        "checks": [
            {
                "name": "cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "interval": "4s",
                "timeout": "4s",
                # The delay comes from a table the test changes: fast first, then slow.
                "query": "SELECT k, at FROM cache, (SELECT pg_sleep(delay) FROM knob) s",
            },
            {
                "name": "other",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": "SELECT k, at FROM cache",
            },
        ],
    }


async def test_a_slow_query_times_out_without_stalling_metrics(
    pg_dsn: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """While a check's query hangs in the database, /metrics answers with the values of the
    previous collection; when the timeout strikes the check reads down with the reason."""
    pg_exec(pg_dsn, "CREATE TABLE cache (k int, at timestamptz)")
    pg_exec(pg_dsn, "INSERT INTO cache VALUES (1, now() - interval '1 hour')")
    pg_exec(pg_dsn, "CREATE TABLE knob (delay float)")
    pg_exec(pg_dsn, "INSERT INTO knob VALUES (0)")
    client = await aiohttp_client(create_app(config_from(tmp_path, slow_config(pg_dsn))))
    runner: Runner = client.app[RUNNER]

    async def scrape() -> dict[Any, float]:
        resp = await client.get("/metrics")
        assert resp.status == 200
        return parse_metrics(await resp.text())

    async def first_value() -> dict[Any, float] | None:
        m = await scrape()
        return m if value(m, "taskmedic_stale_rows", check="cache") == 1 else None

    await until(first_value, 10, "the first collection")
    pg_exec(pg_dsn, "UPDATE knob SET delay = 60")

    def sleeping() -> bool:
        rows = pg_exec(
            pg_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND application_name = 'taskmedic-exporter' AND query LIKE '%%pg_sleep(delay)%%'",
        )
        return bool(rows[0][0] > 0)

    await until(sleeping, 15, "the check's query to hang in pg_sleep")
    m = await scrape()
    assert sleeping(), "the query must still be running while /metrics answered"
    assert value(m, "taskmedic_check_up", check="cache") == 1
    assert value(m, "taskmedic_stale_rows", check="cache") == 1
    assert value(m, "taskmedic_check_up", check="other") == 1

    async def timed_out() -> dict[Any, float] | None:
        m = await scrape()
        return m if value(m, "taskmedic_check_up", check="cache") == 0 else None

    m = await until(timed_out, 20, "the slow collection to time out")
    assert value(m, "taskmedic_stale_rows", check="cache") is None
    assert value(m, "taskmedic_stale_rows", check="other") == 1
    error = runner.state("cache").error or ""
    assert "timed out after 4s" in error
    assert "canceling statement due to statement timeout" in error  # stopped by the server

    pg_exec(pg_dsn, "UPDATE knob SET delay = 0")

    async def recovered() -> dict[Any, float] | None:
        m = await scrape()
        return m if value(m, "taskmedic_stale_rows", check="cache") == 1 else None

    await until(recovered, 20, "the check to recover once the query is fast again")


async def test_openmetrics_is_served_when_the_scraper_asks(
    pg_dsn: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Prometheus asking for OpenMetrics gets it (with # EOF); anyone else gets text 0.0.4."""
    pg_exec(pg_dsn, "CREATE TABLE cache (k int, at timestamptz)")
    client = await aiohttp_client(create_app(config_from(tmp_path, slow_config(pg_dsn))))
    runner: Runner = client.app[RUNNER]
    await until(lambda: runner.state("other").up is not None, 10, "a collection")

    resp = await client.get(
        "/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["taskmedic_build_info"].samples[0].labels["version"]
    up = {s.labels["check"]: s.value for s in families["taskmedic_check_up"].samples}
    assert up["other"] == 1

    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert value(parse_metrics(await resp.text()), "taskmedic_stale_rows", check="other") == 0


async def test_landing_page_lists_checks_with_state_and_escaped_errors(
    pg_dsn: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """`/` names every check, its state and its last error, with the error escaped (it may
    quote data from the database)."""
    data = {
        "databases": {"app": {"dsn": pg_dsn}},
        "exporter": {"interval": "1s"},
        "checks": [
            {
                "name": "broken",
                "type": "stale_status",
                "database": "app",
                "max_age": "1m",
                "query": "SELECT '<script>alert(1)</script>'::int, now()",
            },
            {
                "name": "fine",
                "type": "stale_status",
                "database": "app",
                "max_age": "1m",
                "query": "SELECT 1, now()",
            },
        ],
    }
    client = await aiohttp_client(create_app(config_from(tmp_path, data)))
    runner: Runner = client.app[RUNNER]
    await until(
        lambda: all(s.up is not None for s in runner.states), 10, "both checks to be collected"
    )
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert "broken" in page
    assert "fine" in page
    assert "invalid input syntax for type integer" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page
    assert ">down<" in page
    assert ">up<" in page

    resp = await client.get("/healthz")
    assert resp.status == 200
