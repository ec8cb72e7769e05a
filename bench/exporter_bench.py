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
import functools
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
    http_get,
    latency_summary,
    log,
    mib,
    ratio,
    serve_on_free_port,
    timed_gets,
    wait_until,
    wrk_latency,
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


def launch_exporter(env: BenchEnv, config: Path, name: str, **settings: Any) -> tuple[Proc, int]:
    """Write `config` (see write_config) on a free port, start `taskmedic exporter` on it."""

    def start(port: int) -> Proc:
        write_config(config, port=port, **settings)
        argv = [sys.executable, "-m", "healer.cli", "exporter", "--config", str(config)]
        return env.proc(argv, name)

    return serve_on_free_port(start, "/metrics", name)


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


def _hundred_checks(checks: int) -> list[dict[str, Any]]:
    """Half stale_status, half orphan_rows, all reading the `processing` rows of `jobs`."""
    defs: list[dict[str, Any]] = []
    for i in range(checks):
        name = f"jobs_{i:03d}"
        if i % 2 == 0:
            defs.append(
                {
                    "name": name,
                    "type": "stale_status",
                    "database": "app",
                    "max_age": "10m",
                    "query": "SELECT id, updated_at FROM jobs WHERE status = 'processing'",
                }
            )
        else:
            defs.append(
                {
                    "name": name,
                    "type": "orphan_rows",
                    "database": "app",
                    "grace": "1m",
                    "query": "SELECT id, updated_at FROM jobs "
                    "WHERE status = 'processing' AND celery_task_id IS NULL",
                }
            )
    return defs


def _scrape_figures(url: str) -> tuple[dict[str, float], dict[str, float] | None]:
    """The Python client's figures and, where wrk is installed, wrk's (both accept gzip)."""
    lat = latency_summary(asyncio.run(timed_gets(url, count=5000, max_seconds=3.0)))
    return lat, wrk_latency(url, seconds=3, headers={"Accept-Encoding": "gzip"})


def idle_control(env: BenchEnv, dsn: str, checks: int = 100) -> dict[str, Any]:
    """The same 100 checks collected once (interval 1 h), then scraped with no collection
    running: what rendering the page alone costs."""
    data.grow_jobs(dsn, 1_000)
    defs = _hundred_checks(checks)
    cfg = env.path("exporter-100-checks-idle.yaml")
    proc, port = launch_exporter(
        env, cfg, "exporter-100-checks-idle", dsn=dsn, interval=3600, checks=defs
    )
    url = f"http://127.0.0.1:{port}/metrics"
    done = wait_collected(port, [d["name"] for d in defs], 0.0, timeout=60)
    lat, wrk = _scrape_figures(url)
    out = {
        "checks_collected": done,
        "metrics": lat,
        "wrk": wrk,
        "page_bytes": len(http_get(url)),
        "samples": len(scrape(port)),
        "rss_mib": mib(proc.rss()),
    }
    proc.stop()
    return out


def metrics_growth(
    env: BenchEnv,
    sizes: tuple[int, ...],
    *,
    indexed: bool,
    control: dict[str, Any] | None = None,
    checks: int = 100,
    interval: float = 10.0,
) -> dict[str, Any]:
    """/metrics p50/p99 at each table size, next to what one collection round cost."""
    dsn = env.database()
    data.grow_jobs(dsn, sizes[0])
    if indexed:
        data.add_processing_index(dsn)
    defs = _hundred_checks(checks)
    names = [d["name"] for d in defs]
    kind = "indexed" if indexed else "seqscan"
    cfg = env.path(f"exporter-100-checks-{kind}.yaml")
    proc, port = launch_exporter(
        env, cfg, f"exporter-100-checks-{kind}", dsn=dsn, interval=interval, checks=defs
    )
    url = f"http://127.0.0.1:{port}/metrics"

    what = (
        "partial index on the processing rows (each query reads ~0.1% of the table)"
        if indexed
        else "no index on status (each query is a sequential scan of the whole table)"
    )
    table = Table(
        f"/metrics with {checks} checks (interval {interval:g}s) as the table grows: {what}",
        [
            "rows",
            "checks collected",
            "check duration p50 ms",
            "check duration max ms",
            "/metrics p50 ms",
            "/metrics p99 ms",
            "/metrics max ms",
            "scrapes",
            "wrk p50 ms",
            "wrk p99 ms",
            "exporter RSS MiB",
        ],
    )
    out: dict[str, Any] = {"checks": checks, "interval_s": interval, "indexed": indexed}
    out["sizes"] = []
    if control is not None:
        c, w = control["metrics"], control["wrk"] or {}
        table.add(
            f"{sizes[0]:,}, no collection running (control)",
            f"{control['checks_collected']}/{checks}",
            float("nan"),
            float("nan"),
            c["p50_ms"],
            c["p99_ms"],
            c["max_ms"],
            c["n"],
            w.get("p50_ms", float("nan")),
            w.get("p99_ms", float("nan")),
            control["rss_mib"],
        )
    for size in sizes:
        log(f"exporter: growing jobs to {size:,} rows ({kind})")
        data.grow_jobs(dsn, size)
        grown = time.time()
        done = wait_collected(port, names, grown, timeout=3 * interval + 60)
        lat, wrk = _scrape_figures(url)
        durations = list(
            by_label(scrape(port), "taskmedic_check_duration_seconds", "check").values()
        )
        row = {
            "rows": size,
            "checks_collected_after_growth": done,
            "check_duration_p50_ms": statistics.median(durations) * 1000 if durations else None,
            "check_duration_max_ms": max(durations) * 1000 if durations else None,
            "metrics": lat,
            "wrk": wrk,
            "rss_mib": mib(proc.rss()),
        }
        out["sizes"].append(row)
        w = wrk or {}
        table.add(
            size,
            f"{done}/{checks}",
            row["check_duration_p50_ms"] or float("nan"),
            row["check_duration_max_ms"] or float("nan"),
            lat["p50_ms"],
            lat["p99_ms"],
            lat["max_ms"],
            lat["n"],
            w.get("p50_ms", float("nan")),
            w.get("p99_ms", float("nan")),
            row["rss_mib"],
        )
    proc.stop()
    p99s = [r["metrics"]["p99_ms"] for r in out["sizes"]]
    out["p99_ratio_largest_to_smallest"] = ratio(p99s[-1], p99s[0])
    table.notes.append(
        "Scrapes run while collections run: one keep-alive Python client, up to 5,000 scrapes "
        "or 3 s per size, timed to the last byte, then wrk (-t1 -c1, 3 s) when installed; both "
        "accept gzip, as Prometheus does."
    )
    if control is not None:
        table.notes.append(
            f"The control row is a second exporter with the same checks collected once, then "
            f"idle: the page is {control['page_bytes']:,} bytes, {control['samples']} samples."
        )
    table.notes.append(
        f"p99 at {sizes[-1]:,} rows / p99 at {sizes[0]:,} rows = "
        f"{out['p99_ratio_largest_to_smallest']:.2f}"
    )
    out["table"] = table.show()
    out["dsn"] = dsn
    return out


# --- 2. one orphan_tasks collection ---------------------------------------------------------


class TimedTraces:
    """The cluster monitor, with each `task_traces` call (Celery's whole part) timed."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        self.times: list[float] = []

    def task_traces(self, task_ids: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.monitor.task_traces(task_ids)
        finally:
            self.times.append(time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.monitor, name)


async def _in_process(
    cfg: Path, monitor: Any, app: Any, task_ids: list[str], n: int
) -> dict[str, Any]:
    """The exporter's own check object and database layer, timed piece by piece."""
    from exporter.checks import CheckContext, build_check
    from exporter.config import load_config
    from exporter.databases import Databases

    config = load_config(cfg)
    # Where task_traces spends its time: its three lookups, timed on this instance only.
    sub: dict[str, list[float]] = {}
    for part in ("_peek_redis", "_ask_workers", "_finished"):
        original = getattr(monitor, part)

        def timed_part(*a: Any, _f: Any = original, _n: str = part) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a)
            finally:
                sub.setdefault(_n, []).append(time.perf_counter() - t0)

        setattr(monitor, part, timed_part)
    check = build_check(config.check("timelines"), config)
    databases = Databases(config.databases)
    timed = TimedTraces(monitor)
    ctx = CheckContext(databases, {"main": timed}, lambda c: bool(monitor.snapshot().broker_up))
    collect: list[float] = []
    sql: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            outcome = await check.collect(ctx)
            collect.append(time.perf_counter() - t0)
        db = databases.get("app")
        for _ in range(20):
            t0 = time.perf_counter()
            result = await db.fetch(ORPHAN_QUERY, 10.0)
            sql.append(time.perf_counter() - t0)
        assert len(result.rows) == 1000, len(result.rows)
    finally:
        databases.close()
    # Celery's inspect round trip alone: the broadcast the lookup makes, with its timeout.
    inspect: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        await asyncio.to_thread(
            lambda: app.control.inspect(timeout=config.celery["main"].inspect_timeout).query_task(
                *task_ids
            )
        )
        inspect.append(time.perf_counter() - t0)
    return {
        "collect": collect,
        "traces": timed.times,
        "sql": sql,
        "inspect": inspect,
        "findings": len(outcome.findings),
        "task_traces_parts": sub,
    }


def orphan_collection(env: BenchEnv, dsn: str, *, collections: int = 8) -> dict[str, Any]:
    from exporter.base.connections import CeleryConfig
    from exporter.celery_state import ClusterMonitor
    from tests.celery_app import make_app

    data.grow_jobs(dsn, 1_000_000)
    data.add_processing_index(dsn)
    broker = env.redis.url
    log("exporter: starting a Celery worker for the orphan_tasks collection")
    worker = env.worker(concurrency=2, name="bench-orphans")
    app = make_app(broker)
    cfg = env.path("exporter-orphans.yaml")
    interval = 3.0
    settings: dict[str, Any] = {
        "dsn": dsn,
        "interval": interval,
        "broker": broker,
        "checks": [
            {
                "name": "timelines",
                "type": "orphan_tasks",
                "database": "app",
                "celery": "main",
                "grace": "2m",
                "query": ORPHAN_QUERY,
            }
        ],
    }
    write_config(cfg, port=0, **settings)  # read in process first; the port comes later
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

        # In this process: the exporter's check, its database layer and the cluster monitor.
        monitor = ClusterMonitor(
            "main", CeleryConfig.model_validate({"broker": broker, "backend": broker})
        )
        monitor.start()
        try:
            wait_until(
                lambda: any(w.online for w in monitor.snapshot().workers),
                20,
                "the monitor to see the worker",
            )
            parts = asyncio.run(_in_process(cfg, monitor, app, task_ids, 6))
            kinds: dict[str, int] = {}
            for v in monitor.task_traces(task_ids).values():
                kinds[str(v)] = kinds.get(str(v), 0) + 1
        finally:
            monitor.stop()

        # The exporter process, collecting on its own.
        proc, port = launch_exporter(env, cfg, "exporter-orphans", **settings)
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
    finally:
        app.close()
        worker.kill()

    def med(xs: list[float]) -> float:
        return statistics.median(xs) * 1000 if xs else float("nan")

    beyond = [c - t for c, t in zip(parts["collect"], parts["traces"], strict=False)]
    out = {
        "rows": 1_000_000,
        "processing_rows": 1000,
        "exporter_collection_ms": med(durations),
        "exporter_collections": len(durations),
        "collect_ms": med(parts["collect"]),
        "task_traces_ms": med(parts["traces"]),
        "inspect_round_trip_ms": med(parts["inspect"]),
        "sql_ms": med(parts["sql"]),
        "collect_beyond_task_traces_ms": med(beyond),
        "exporter_beyond_inspect_ms": med(durations) - med(parts["inspect"]),
        "trace_kinds": kinds,
        "exported_orphans": orphans,
    }
    table = Table(
        "One orphan_tasks collection: 1,000,000 rows, 1,000 processing, partial index",
        ["measure", "median ms", "note"],
    )
    table.add(
        "exporter process: taskmedic_check_duration_seconds",
        out["exporter_collection_ms"],
        f"{len(durations)} collections, interval {interval:g}s",
    )
    table.add("same check, in process: collect()", out["collect_ms"], "6 collections")
    table.add(
        "  of which Celery: task_traces(1,000 ids)",
        out["task_traces_ms"],
        ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())),
    )
    table.add(
        "  of which the rest: SQL, grace, two observations",
        out["collect_beyond_task_traces_ms"],
        "target < 50 ms",
    )
    for part, label in (
        ("_peek_redis", "broker queue peek (LRANGE)"),
        ("_ask_workers", "workers: inspect query_task broadcast"),
        ("_finished", "result backend (MGET)"),
    ):
        out[f"task_traces{part}_ms"] = med(parts["task_traces_parts"].get(part, []))
        table.add(f"    task_traces: {label}", out[f"task_traces{part}_ms"], "")
    table.add("SQL alone (exporter's Database.fetch)", out["sql_ms"], "20 runs, READ ONLY")
    table.add(
        "Celery's inspect round trip alone (query_task, inspect_timeout 1 s)",
        out["inspect_round_trip_ms"],
        "3 runs",
    )
    table.add(
        "exporter process duration minus the inspect round trip",
        out["exporter_beyond_inspect_ms"],
        "target < 50 ms",
    )
    table.notes.append(
        f"Exported at the end: taskmedic_orphan_tasks {orphans}. 16 rows point at tasks that "
        "are running, reserved, queued (2 each) or finished (10); 984 at ids Celery never saw."
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
    cfg = env.path("exporter-status-cache.yaml")
    targets: dict[str, tuple[Proc, int]] = {}
    targets["taskmedic (interval 15s)"] = launch_exporter(
        env,
        cfg,
        "exporter-peer-cmp",
        dsn=dsn,
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

    def start_peer(pcfg: Path, log_path: Path, port: int) -> Proc:
        return env.adopt(peer.start(pcfg, port, log_path))

    for label, iv in (
        ("query-exporter (interval 15s)", interval),
        ("query-exporter (on scrape)", None),
    ):
        mode = "interval" if iv else "scrape"
        pcfg = env.path(f"query-exporter-{mode}.yaml")
        peer.write_config(pcfg, dsn, STATUS_QUERY, 600, iv)
        targets[label] = serve_on_free_port(
            functools.partial(start_peer, pcfg, env.path(f"query-exporter-{mode}.log")),
            "/metrics",
            label,
        )

    def stale_value(label: str, port: int) -> float | None:
        values = scrape(port)
        if label.startswith("taskmedic"):
            return by_label(values, "taskmedic_stale_rows", "check").get("tree_status_cache")
        return by_label(values, "stale_rows", "database").get("app")

    def exports_stale_value(label: str, port: int) -> bool:
        return stale_value(label, port) is not None

    found: dict[str, float | None] = {}
    for label, (_, port) in targets.items():
        wait_until(
            functools.partial(exports_stale_value, label, port),
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
    wrk = {
        label: wrk_latency(
            f"http://127.0.0.1:{port}/metrics", seconds=3, headers={"Accept-Encoding": "gzip"}
        )
        for label, (_, port) in targets.items()
    }
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
            "wrk p50 ms",
            "wrk p99 ms",
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
            (wrk[label] or {}).get("p50_ms", float("nan")),
            (wrk[label] or {}).get("p99_ms", float("nan")),
            rss_idle[label],
            rss_after[label],
            ratio(rss_after[label], rss_after[base]),
        )
    table.notes.append(
        "Same table, same inner SELECT; query-exporter exports columns, so its SQL wraps the "
        "SELECT in the aggregate taskmedic computes (count of stale rows, oldest age). "
        "Fair setting: query-exporter gets `interval: 15s` like taskmedic's check, so both "
        "serve scrapes from the last collection; its default (query on every scrape) is shown "
        f"too. {rounds} interleaved rounds of {per_round} scrapes each, one keep-alive Python "
        "client, then wrk (-t1 -c1, 3 s) per exporter when installed."
    )
    for p, _ in targets.values():
        p.stop()
    return {
        "agents": agents,
        "stale_rows": found,
        "scrape": sums,
        "rss_idle_mib": rss_idle,
        "rss_after_mib": rss_after,
        "wrk": wrk,
        "table": table.show(),
    }


def run(env: BenchEnv, quick: bool = False) -> dict[str, Any]:
    sizes = SIZES[:3] if quick else SIZES
    out: dict[str, Any] = {}
    control = idle_control(env, env.database())
    out["metrics_control"] = control
    out["metrics_growth_indexed"] = indexed = metrics_growth(
        env, sizes, indexed=True, control=control
    )
    out["metrics_growth_seqscan"] = metrics_growth(env, sizes, indexed=False)
    # The indexed table is the one the orphan_tasks collection reads (grown to 1M if quick).
    out["orphan_collection"] = orphan_collection(env, indexed.pop("dsn"))
    out["metrics_growth_seqscan"].pop("dsn")
    out["vs_query_exporter"] = versus_query_exporter(env, env.database())
    return out
