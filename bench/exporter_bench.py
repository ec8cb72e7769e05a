"""Issue 3's performance section: the exporter, run as a real `taskmedic exporter` process.

1. `/metrics` latency with 100 checks while the table they read grows 1k -> 1M rows. The
   checks' queries have no index to use (a sequential scan each), so a collection round costs
   more as the table grows; `/metrics` answers from the last results and must not.
2. One `orphan_tasks` collection over a 1M-row table with 1,000 `processing` rows and a
   fitting partial index, with a real Celery worker on Redis: the whole collection as the
   exporter times it, the SQL alone and the Celery part alone (`ClusterMonitor.task_traces`:
   inspect round trip, broker queue peek, result backend).
3. The same stale-status SQL through query-exporter, side by side: scrape latency and RSS.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench import data, peer
from bench.env import BenchEnv
from bench.harness import (
    Proc,
    Table,
    free_port,
    http_get,
    http_ok,
    latency_summary,
    log,
    mib,
    ratio,
    timed_gets,
    wait_until,
)
from bench.metrics_text import by_label, samples

SIZES = (1_000, 10_000, 100_000, 1_000_000)
ORPHAN_QUERY = "SELECT id, celery_task_id, updated_at FROM jobs WHERE status = 'processing'"
STATUS_QUERY = "SELECT agent_id, updated_at FROM agents_status_cache"


def write_config(
    path: Path,
    *,
    dsn: str,
    port: int,
    interval: float,
    checks: list[dict[str, Any]],
    broker: str | None = None,
    timeout: float | None = None,
) -> None:
    config: dict[str, Any] = {
        "databases": {"app": {"dsn": dsn}},
        "exporter": {"listen": f"127.0.0.1:{port}", "interval": f"{interval}s"},
        "checks": checks,
    }
    if timeout is not None:
        config["exporter"]["timeout"] = f"{timeout}s"
    if broker is not None:
        config["celery"] = {"main": {"broker": broker, "backend": broker}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start_exporter(env: BenchEnv, config: Path, name: str) -> Proc:
    return env.proc([sys.executable, "-m", "healer.cli", "exporter", "--config", str(config)], name)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(http_get(f"http://127.0.0.1:{port}/metrics"))


def wait_collected(port: int, checks: list[str], after: float, timeout: float) -> int:
    """Wait until every check has a successful collection that started after `after`.

    Returns how many did (fewer than all when the deadline passed: reported, not hidden).
    """
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        last = by_label(scrape(port), "taskmedic_check_last_success_timestamp_seconds", "check")
        done = sum(1 for c in checks if last.get(c, 0.0) > after)
        if done == len(checks):
            break
        time.sleep(0.5)
    return done


# --- 1. /metrics while the tables grow ------------------------------------------------------


def metrics_growth(
    env: BenchEnv, dsn: str, sizes: tuple[int, ...], *, checks: int = 100, interval: float = 10.0
) -> dict[str, Any]:
    """/metrics p50/p99 at each table size, next to what one collection round cost."""
    data.grow_jobs(dsn, sizes[0])
    port = free_port()
    names = []
    check_defs: list[dict[str, Any]] = []
    for i in range(checks):
        name = f"jobs_{i:03d}"
        names.append(name)
        if i % 2 == 0:
            check_defs.append(
                {
                    "name": name,
                    "type": "stale_status",
                    "database": "app",
                    "max_age": "10m",
                    "query": "SELECT id, updated_at FROM jobs WHERE status = 'processing'",
                }
            )
        else:
            check_defs.append(
                {
                    "name": name,
                    "type": "orphan_rows",
                    "database": "app",
                    "grace": "1m",
                    "query": "SELECT id, updated_at FROM jobs "
                    "WHERE status = 'processing' AND celery_task_id IS NULL",
                }
            )
    cfg = env.path("exporter-100-checks.yaml")
    write_config(cfg, dsn=dsn, port=port, interval=interval, checks=check_defs)
    proc = start_exporter(env, cfg, "exporter-100-checks")
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: http_ok(url, proc=proc), 30, "the exporter to serve /metrics")

    table = Table(
        f"/metrics with {checks} checks (interval {interval:g}s) as the table grows",
        [
            "rows",
            "checks collected",
            "check duration p50 ms",
            "check duration max ms",
            "/metrics p50 ms",
            "/metrics p99 ms",
            "/metrics max ms",
            "scrapes",
            "exporter RSS MiB",
        ],
    )
    out: dict[str, Any] = {"checks": checks, "interval_s": interval, "sizes": []}
    for size in sizes:
        log(f"exporter: growing jobs to {size:,} rows")
        data.grow_jobs(dsn, size)
        grown = time.time()
        done = wait_collected(port, names, grown, timeout=3 * interval + 60)
        lat = asyncio.run(timed_gets(url, count=5000, max_seconds=5.0))
        values = scrape(port)
        durations = list(by_label(values, "taskmedic_check_duration_seconds", "check").values())
        s = latency_summary(lat)
        row = {
            "rows": size,
            "checks_collected_after_growth": done,
            "check_duration_p50_ms": statistics.median(durations) * 1000 if durations else None,
            "check_duration_max_ms": max(durations) * 1000 if durations else None,
            "metrics": s,
            "rss_mib": mib(proc.rss()),
        }
        out["sizes"].append(row)
        table.add(
            size,
            f"{done}/{checks}",
            row["check_duration_p50_ms"] or float("nan"),
            row["check_duration_max_ms"] or float("nan"),
            s["p50_ms"],
            s["p99_ms"],
            s["max_ms"],
            s["n"],
            row["rss_mib"],
        )
    p99s = [r["metrics"]["p99_ms"] for r in out["sizes"]]
    out["p99_ratio_largest_to_smallest"] = ratio(p99s[-1], p99s[0])
    table.notes.append(
        "Each check's query is a sequential scan (no index on status): a collection round "
        "costs more as the table grows. Scrapes run while collections run, one keep-alive "
        "client, up to 5,000 scrapes or 5 s per size, timed to the last byte."
    )
    table.notes.append(
        f"p99 at {sizes[-1]:,} rows / p99 at {sizes[0]:,} rows = "
        f"{out['p99_ratio_largest_to_smallest']:.2f}"
    )
    out["table"] = table.show()
    proc.stop()
    return out


# --- 2. one orphan_tasks collection ---------------------------------------------------------


def _sql_times(dsn: str, repeat: int) -> list[float]:
    """The check's statement in a READ ONLY transaction with a statement timeout, as the
    exporter runs it, on a connection that is already open (the exporter keeps a pool)."""
    times = []
    with psycopg.connect(dsn) as conn:
        for _ in range(repeat):
            t0 = time.perf_counter()
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute("SET LOCAL statement_timeout = 10000")
                rows = conn.execute(ORPHAN_QUERY).fetchall()
            times.append(time.perf_counter() - t0)
            assert len(rows) == 1000, len(rows)
    return times


def orphan_collection(env: BenchEnv, dsn: str, *, collections: int = 8) -> dict[str, Any]:
    from exporter.celery_state import ClusterMonitor

    from exporter.config import CeleryConfig
    from tests.celery_app import make_app

    data.grow_jobs(dsn, 1_000_000)
    data.add_processing_index(dsn)
    broker = env.redis.url
    log("exporter: starting a Celery worker for the orphan_tasks collection")
    worker = env.worker(concurrency=2, name="bench-orphans")
    app = make_app(broker)
    try:
        finished = [app.send_task("tests.add", args=[1, i]) for i in range(10)]
        for r in finished:
            r.get(timeout=30)
        running = [app.send_task("tests.sleep", args=[300]) for _ in range(6)]
        ids = data.processing_ids(dsn, 1000)
        mapping = {ids[i]: finished[i].id for i in range(10)}
        mapping.update({ids[10 + i]: running[i].id for i in range(6)})
        data.set_task_ids(dsn, mapping)
        with psycopg.connect(dsn) as conn:
            task_ids = [
                str(r[0])
                for r in conn.execute(
                    "SELECT celery_task_id FROM jobs WHERE status = 'processing' ORDER BY id"
                ).fetchall()
            ]

        # The exporter, collecting on its own every 2 s.
        port = free_port()
        cfg = env.path("exporter-orphans.yaml")
        interval = 2.0
        write_config(
            cfg,
            dsn=dsn,
            port=port,
            interval=interval,
            broker=broker,
            checks=[
                {
                    "name": "timelines",
                    "type": "orphan_tasks",
                    "database": "app",
                    "celery": "main",
                    "grace": "2m",
                    "query": ORPHAN_QUERY,
                }
            ],
        )
        proc = start_exporter(env, cfg, "exporter-orphans")
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: http_ok(url, proc=proc), 30, "the orphan exporter")
        durations: list[float] = []
        seen: set[float] = set()
        last_values: dict[Any, float] = {}
        deadline = time.monotonic() + collections * interval * 3 + 30
        while len(durations) < collections and time.monotonic() < deadline:
            values = scrape(port)
            ts = by_label(values, "taskmedic_check_last_success_timestamp_seconds", "check")
            t = ts.get("timelines")
            if t is not None and t not in seen:
                seen.add(t)
                d = by_label(values, "taskmedic_check_duration_seconds", "check")["timelines"]
                durations.append(d)
                last_values = values
            time.sleep(0.1)
        orphans = by_label(last_values, "taskmedic_orphan_tasks", "reason")
        proc.stop()

        # The two parts alone, in this process.
        sql = _sql_times(dsn, 20)
        monitor = ClusterMonitor("main", CeleryConfig.model_validate({"broker": broker}))
        monitor.start()
        try:
            wait_until(
                lambda: any(w.online for w in monitor.snapshot().workers),
                20,
                "the monitor to see the worker",
            )
            traces: list[float] = []
            kinds: dict[str, int] = {}
            for _ in range(5):
                t0 = time.perf_counter()
                result = monitor.task_traces(task_ids)
                traces.append(time.perf_counter() - t0)
            for v in result.values():
                kinds[str(v)] = kinds.get(str(v), 0) + 1
        finally:
            monitor.stop()
    finally:
        app.close()
        worker.kill()

    coll = statistics.median(durations) if durations else float("nan")
    celery_part = statistics.median(traces)
    out = {
        "rows": 1_000_000,
        "processing_rows": 1000,
        "collections_timed": len(durations),
        "collection_p50_ms": coll * 1000,
        "collection_max_ms": max(durations) * 1000 if durations else float("nan"),
        "sql_p50_ms": statistics.median(sql) * 1000,
        "celery_task_traces_p50_ms": celery_part * 1000,
        "beyond_celery_ms": (coll - celery_part) * 1000,
        "trace_kinds": kinds,
        "exported_orphans": orphans,
    }
    table = Table(
        "One orphan_tasks collection: 1,000,000 rows, 1,000 processing, partial index",
        ["part", "median ms", "note"],
    )
    table.add(
        "whole collection (exporter's taskmedic_check_duration_seconds)",
        out["collection_p50_ms"],
        f"{len(durations)} collections, max {out['collection_max_ms']:.1f} ms",
    )
    table.add("SQL alone (READ ONLY transaction, 1,000 rows)", out["sql_p50_ms"], "20 runs")
    table.add(
        "Celery alone (task_traces of 1,000 ids)",
        out["celery_task_traces_p50_ms"],
        ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())),
    )
    table.add("collection beyond Celery (target < 50 ms)", out["beyond_celery_ms"], "")
    table.notes.append(
        f"Exported at the end: taskmedic_orphan_tasks {orphans} (16 rows point at tasks that "
        "are running, reserved, queued or finished, 984 at ids Celery never saw)."
    )
    out["table"] = table.show()
    return out


# --- 3. side by side with query-exporter ----------------------------------------------------


def versus_query_exporter(
    env: BenchEnv, dsn: str, *, agents: int = 10_000, rounds: int = 4, per_round: int = 500
) -> dict[str, Any]:
    if not peer.available():
        log("exporter: .venv-peer has no query-exporter (run `make bench`); comparison skipped")
        return {"skipped": "query-exporter is not installed in .venv-peer"}
    data.fill_status_cache(dsn, agents)
    interval = 15.0
    port_tm = free_port()
    cfg = env.path("exporter-status-cache.yaml")
    write_config(
        cfg,
        dsn=dsn,
        port=port_tm,
        interval=interval,
        checks=[
            {
                "name": "tree_status_cache",
                "type": "stale_status",
                "database": "app",
                "max_age": "10m",
                "query": STATUS_QUERY,
            }
        ],
    )
    targets: dict[str, tuple[Proc, int]] = {}
    targets["taskmedic (interval 15s)"] = (start_exporter(env, cfg, "exporter-peer-cmp"), port_tm)
    for label, iv in (
        ("query-exporter (interval 15s)", interval),
        ("query-exporter (on scrape)", None),
    ):
        port = free_port()
        pcfg = env.path(f"query-exporter-{'interval' if iv else 'scrape'}.yaml")
        peer.write_config(pcfg, dsn, STATUS_QUERY, 600, iv)
        p = peer.start(pcfg, port, env.path(f"query-exporter-{'interval' if iv else 'scrape'}.log"))
        env._stack.callback(p.stop)
        targets[label] = (p, port)
    for label, (p, port) in targets.items():
        wait_until(
            lambda p=p, port=port: http_ok(f"http://127.0.0.1:{port}/metrics", proc=p), 30, label
        )

    def stale_value(label: str, port: int) -> float | None:
        values = scrape(port)
        if label.startswith("taskmedic"):
            return by_label(values, "taskmedic_stale_rows", "check").get("tree_status_cache")
        return by_label(values, "stale_rows", "database").get("app")

    found: dict[str, float | None] = {}
    for label, (_, port) in targets.items():
        wait_until(
            lambda label=label, port=port: stale_value(label, port) is not None,
            30,
            f"{label} to export the stale count",
        )
        found[label] = stale_value(label, port)
    rss_idle = {label: mib(p.rss()) for label, (p, _) in targets.items()}
    lat: dict[str, list[float]] = {label: [] for label in targets}
    for _ in range(rounds):  # interleaved, so drift on the machine hits every target alike
        for label, (_, port) in targets.items():
            lat[label] += asyncio.run(
                timed_gets(f"http://127.0.0.1:{port}/metrics", count=per_round, max_seconds=10)
            )
    rss_after = {label: mib(p.rss()) for label, (p, _) in targets.items()}
    base = "taskmedic (interval 15s)"
    sums = {label: latency_summary(v) for label, v in lat.items()}
    table = Table(
        f"Stale-status check over a {agents:,}-row status cache: taskmedic vs query-exporter 5",
        [
            "exporter",
            "stale rows exported",
            "scrape p50 ms",
            "scrape p99 ms",
            "p99 / taskmedic",
            "RSS idle MiB",
            "RSS after scrapes MiB",
            "RSS / taskmedic",
        ],
    )
    for label in targets:
        table.add(
            label,
            found[label],
            sums[label]["p50_ms"],
            sums[label]["p99_ms"],
            ratio(sums[label]["p99_ms"], sums[base]["p99_ms"]),
            rss_idle[label],
            rss_after[label],
            ratio(rss_after[label], rss_after[base]),
        )
    table.notes.append(
        "Same table, same inner SELECT; query-exporter exports columns, so its SQL wraps the "
        "SELECT in the aggregate taskmedic computes (count of stale rows, oldest age). "
        "Fair setting: query-exporter gets `interval: 15s` like taskmedic's check, so both "
        "serve scrapes from the last collection; its default (query on every scrape) is shown "
        f"too. {rounds} interleaved rounds of {per_round} scrapes each, one keep-alive client."
    )
    for p, _ in targets.values():
        p.stop()
    return {
        "agents": agents,
        "stale_rows": found,
        "scrape": sums,
        "rss_idle_mib": rss_idle,
        "rss_after_mib": rss_after,
        "table": table.show(),
    }


def run(env: BenchEnv, quick: bool = False) -> dict[str, Any]:
    dsn = env.database()
    sizes = SIZES[:3] if quick else SIZES
    out: dict[str, Any] = {}
    out["metrics_growth"] = metrics_growth(env, dsn, sizes)
    out["orphan_collection"] = orphan_collection(env, dsn)
    out["vs_query_exporter"] = versus_query_exporter(env, dsn)
    return out
