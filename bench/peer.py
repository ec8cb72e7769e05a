"""query-exporter (PyPI, 5.x), the peer of the exporter benchmark, run from its own venv.

`make bench` builds `.venv-peer` with query-exporter and psycopg2-binary so their dependencies
never mix with ours. query-exporter exports column values, so the stale-status check becomes
the same SELECT wrapped in the aggregate taskmedic computes (count of stale rows, oldest age).

Fairness: by default query-exporter runs its queries on each scrape. taskmedic serves
`/metrics` from the results of its background collection, so query-exporter is given the same
`interval:` as taskmedic's check and then also serves scrapes from its registry.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import yaml

from bench.harness import ROOT, Proc

PEER_VENV = ROOT / ".venv-peer"
PEER_BIN = PEER_VENV / "bin" / "query-exporter"


def available() -> bool:
    return PEER_BIN.exists()


def sqlalchemy_url(dsn: str) -> str:
    """The same database as a SQLAlchemy URL for psycopg2 (what query-exporter speaks)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    host = info.get("host", "127.0.0.1")
    port = info.get("port", 5432)
    if str(host).startswith("/"):  # a unix socket directory (embedded pgserver)
        return f"postgresql+psycopg2://{user}{password}@/{info['dbname']}?host={host}"
    return f"postgresql+psycopg2://{user}{password}@{host}:{port}/{info['dbname']}"


def stale_sql(inner: str, max_age_seconds: float) -> str:
    """What taskmedic's stale_status check computes from `inner`, as one aggregate query:
    rows older than max_age (or never refreshed), and the age of the oldest timestamp."""
    return (
        "SELECT count(*) FILTER (WHERE ts IS NULL OR ts < now() - make_interval(secs => "
        f"{max_age_seconds})) AS stale_rows, "
        "coalesce(extract(epoch FROM now() - min(ts)), 0) AS stale_oldest_age_seconds "
        f"FROM ({inner}) AS q(key, ts)"
    )


def write_config(
    path: Path, dsn: str, inner_sql: str, max_age_seconds: float, interval: float | None
) -> None:
    """`interval=None` leaves query-exporter's default: run the query on every scrape."""
    query: dict[str, object] = {
        "databases": ["app"],
        "metrics": ["stale_rows", "stale_oldest_age_seconds"],
        "sql": stale_sql(inner_sql, max_age_seconds),
    }
    if interval is not None:
        query["interval"] = f"{int(interval)}s"
    config = {
        "databases": {"app": {"dsn": sqlalchemy_url(dsn)}},
        "metrics": {
            "stale_rows": {"type": "gauge", "description": "Rows older than max_age"},
            "stale_oldest_age_seconds": {
                "type": "gauge",
                "description": "Age of the oldest stale row",
            },
        },
        "queries": {"tree_status_cache": query},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start(config: Path, port: int, log_path: Path) -> Proc:
    return Proc(
        [str(PEER_BIN), "--config", str(config), "-H", "127.0.0.1", "-p", str(port), "-L", "error"],
        log_path,
    )
