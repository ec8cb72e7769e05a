"""Issue 4's performance section: the healer, run as a real `taskmedic healer` process.

1. Start latency: a pending action's first step starts within 50 ms of the commit that made it
   pending (the executor is woken by NOTIFY, not by its 1 s polling fallback).
2. Ingest throughput: single-alert Alertmanager notifications, each with its own fingerprint,
   POSTed with a bearer token by concurrent keep-alive clients; every alert matches a rule
   (with approval, so the storm records actions without running them). Against two ceilings
   from the same run: a bare aiohttp handler (same client, same bodies) and `pgbench`
   committing the same inserts per transaction on the same server and schema.
3. Memory: the healer's RSS sampled before, during and after two storms of 10,000 alerts.

Where wrk is installed, both servers also get a storm from wrk (bench/storm.lua): the same
kind of notifications from a C client, which leaves more of the 2 cores to the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench import alertmanager_storm, alerts, bare_app, pgbench_ceiling
from bench.env import BenchEnv
from bench.harness import (
    PostRun,
    RssSampler,
    Table,
    cpu_seconds,
    latency_summary,
    log,
    post_bodies,
    ratio,
    serve_on_free_port,
    wait_until,
    wrk_storm,
)
from bench.healer_proc import Healer, start_healer

CONCURRENCY = 16
STORM = 10_000
WRK_SECONDS = 10
# The wrk storms against the healer, by connections: three at the Python client's 16, for a
# median, then 64. Alertmanager opens a connection per aggregation group it is flushing (its
# HTTP client sets no limit per host), so a storm of many groups brings many more than 16.
WRK_CONNECTIONS = (16, 16, 16, 64)

INGEST_RULE = {
    "name": "fail-orphan-timelines",
    "match": {"alertname": "TaskmedicOrphanTasks"},
    "approval": True,
    "steps": [
        {
            "name": "mark errored",
            "script": {"argv": ["true"], "timeout": "10s"},
        }
    ],
}
LATENCY_RULE = {
    "name": "start-latency",
    "match": {"alertname": "BenchStartLatency"},
    "steps": [{"name": "stamp", "script": {"argv": ["date", "+%s.%N"], "timeout": "10s"}}],
}


def _post(url: str, bodies: list[bytes], headers: dict[str, str]) -> PostRun:
    return asyncio.run(
        post_bodies(url, bodies, concurrency=CONCURRENCY, max_seconds=120, headers=headers)
    )


def _template(env: BenchEnv) -> Path:
    """A notification for bench/storm.lua: wrk gives each request its own shard and fingerprint."""
    p = alerts.payload(0, run="wrk-")
    p["alerts"][0]["labels"]["shard"] = p["commonLabels"]["shard"] = "@SHARD@"
    p["alerts"][0]["fingerprint"] = "@FP@"
    path = env.path("storm-template.json")
    path.write_text(json.dumps(p))
    return path


def _wrk(
    env: BenchEnv, url: str, pid: int, headers: dict[str, str], connections: int = CONCURRENCY
) -> dict[str, Any] | None:
    cpu0 = cpu_seconds(pid)
    out = wrk_storm(
        url, _template(env), seconds=WRK_SECONDS, connections=connections, headers=headers
    )
    if out is None:
        return None
    return {**out, "server_cpu_s": cpu_seconds(pid) - cpu0}


def _per_txn(before: tuple[float, float], after: tuple[float, float]) -> float:
    return ratio(after[1] - before[1], after[0] - before[0])


# --- 1. start latency -----------------------------------------------------------------------


def start_latency(healer: Healer, trials: int) -> dict[str, Any]:
    claim: list[float] = []
    step: list[float] = []
    printed: list[float] = []
    upper: list[float] = []
    for i in range(trials):
        body = alerts.body(i, alertname="BenchStartLatency", run="lat-")
        fp = alerts.payload(i, alertname="BenchStartLatency", run="lat-")["alerts"][0][
            "fingerprint"
        ]
        req = urllib.request.Request(  # noqa: S310 - 127.0.0.1 only
            f"{healer.url}/alerts",
            data=body,
            headers={**healer.auth, "Content-Type": "application/json"},
            method="POST",
        )
        t_sent = time.time()
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            resp.read()
        t_resp = time.time()  # the commit happened before this: a lower bound on the latency

        def started(fp: str = fp) -> tuple[Any, ...] | None:
            rows = healer.query(
                "SELECT extract(epoch FROM a.started_at), extract(epoch FROM s.started_at), "
                "a.state, (SELECT convert_from(string_agg(c.data, ''::bytea ORDER BY c.id), "
                "'UTF8') FROM log_chunks c WHERE c.action_id = a.id AND c.stream = 'stdout') "
                "FROM actions a JOIN steps s ON s.action_id = a.id AND s.idx = 0 "
                "WHERE a.fingerprint = %s",
                (fp,),
            )
            if rows and rows[0][2] in ("succeeded", "failed") and rows[0][1] is not None:
                return rows[0]
            return None

        row = wait_until(started, 15, f"latency trial {i} to finish", interval=0.01)
        a_start, s_start, _, out = float(row[0]), float(row[1]), row[2], row[3]
        claim.append(a_start - t_resp)
        step.append(s_start - t_resp)
        upper.append(s_start - t_sent)
        if out and out.strip():
            printed.append(float(out.strip().splitlines()[0]) - t_resp)
    result = {
        "trials": trials,
        "claimed_ms": _ms(claim),
        "step_started_ms": _ms(step),
        "step_started_upper_ms": _ms(upper),
        "script_printed_ms": _ms(printed),
    }
    table = Table(
        f"Pending action start latency after its commit ({trials} alerts, one at a time)",
        ["from the 2xx (commit before it) to", "p50 ms", "p90 ms", "max ms"],
    )
    table.add("action claimed (actions.started_at)", *_pct(claim))
    table.add("step started (steps.started_at) - target < 50 ms", *_pct(step))
    table.add("script's own clock (`date +%s.%N` it printed)", *_pct(printed))
    table.add("step started, from the request being sent (upper bound)", *_pct(upper))
    table.notes.append(
        "The commit happens before the healer answers, so timing from the answer is a lower "
        "bound and timing from the request an upper bound; the truth lies between the two "
        "'step started' rows. Times are the journal's now() and this machine's clock."
    )
    result["table"] = table.show()
    return result


def _ms(values: list[float]) -> dict[str, float]:
    return latency_summary(values)


def _pct(values: list[float]) -> list[float]:
    s = latency_summary(values)
    return [s["p50_ms"], s["p90_ms"], s["max_ms"]]


# --- 2 and 3. ingest throughput and memory --------------------------------------------------


def bare_ceiling(env: BenchEnv, count: int) -> dict[str, Any]:
    proc, port = serve_on_free_port(
        lambda port: env.proc([sys.executable, "-m", bare_app.__name__, str(port)], "bare-aiohttp"),
        "/healthz",
        "bare aiohttp app",
    )
    bodies = [alerts.body(i, run="bare-") for i in range(count)]
    cpu0, me0 = cpu_seconds(proc.pid), cpu_seconds(psutil.Process().pid)
    url = f"http://127.0.0.1:{port}/alerts"
    run = _post(url, bodies, {"Authorization": "Bearer x"})
    cpu1, me1 = cpu_seconds(proc.pid), cpu_seconds(psutil.Process().pid)
    wrk = _wrk(env, url, proc.pid, {"Authorization": "Bearer x"})
    proc.stop()
    return {
        "sent": run.sent,
        "rate": run.rate,
        "statuses": run.statuses,
        "latency": latency_summary(run.latencies),
        "server_cpu_s": cpu1 - cpu0,
        "client_cpu_s": me1 - me0,
        "elapsed_s": run.elapsed,
        "wrk": wrk,
    }


def ingest_storms(env: BenchEnv, healer: Healer, storms: int, count: int) -> dict[str, Any]:
    url = f"{healer.url}/alerts"
    me = psutil.Process().pid
    runs: list[dict[str, Any]] = []
    with RssSampler(healer.proc.pid, interval=0.1) as rss:
        rss.phase("idle")
        time.sleep(2)
        rss.phase("warm-up")
        _post(url, [alerts.body(i, run="warm-") for i in range(500)], healer.auth)
        rss.phase("before")
        time.sleep(2)
        for n in range(1, storms + 1):
            bodies = [alerts.body(i, run=f"storm{n}-") for i in range(count)]
            rss.phase(f"storm {n}")
            b0 = healer.batches()
            cpu0, me0 = cpu_seconds(healer.proc.pid), cpu_seconds(me)
            run = _post(url, bodies, healer.auth)
            cpu1, me1 = cpu_seconds(healer.proc.pid), cpu_seconds(me)
            b1 = healer.batches()
            rss.phase(f"after {n}")
            time.sleep(3)
            runs.append(
                {
                    "sent": run.sent,
                    "rate": run.rate,
                    "statuses": run.statuses,
                    "latency": latency_summary(run.latencies),
                    "server_cpu_s": cpu1 - cpu0,
                    "client_cpu_s": me1 - me0,
                    "elapsed_s": run.elapsed,
                    "per_transaction": _per_txn(b0, b1),
                }
            )
            log(f"healer: storm {n}: {run.rate:,.0f} alerts/s, statuses {run.statuses}")
        wrk_runs: list[dict[str, Any]] = []
        for n, connections in enumerate(WRK_CONNECTIONS, 1):
            rss.phase(f"wrk storm {n}")
            b0 = healer.batches()
            wrk = _wrk(env, url, healer.proc.pid, healer.auth, connections)
            if wrk is None:
                break
            wrk["connections"] = connections
            wrk["per_transaction"] = _per_txn(b0, healer.batches())
            wrk_runs.append(wrk)
            log(
                f"healer: wrk storm {n} ({connections} connections): {wrk['rate']:,.0f} "
                f"alerts/s, {wrk['non_2xx']:.0f} non-2xx"
            )
        rss.phase("after wrk")
        time.sleep(2)
    sample = healer.query(
        "SELECT n.payload, a.plan FROM actions a JOIN alerts al ON al.id = a.alert_id "
        "JOIN notifications n ON n.id = al.notification_id ORDER BY a.id DESC LIMIT 1"
    )
    # Rows the ingest wrote for the storm's rule only (the latency trials' actions also ran).
    rule = INGEST_RULE["name"]
    counts = dict(
        zip(
            ("notifications", "alerts", "actions", "steps", "events"),
            healer.query(
                "WITH a AS (SELECT id, alert_id FROM actions WHERE rule = %(rule)s) "
                "SELECT (SELECT count(DISTINCT al.notification_id) FROM alerts al "
                "        JOIN a ON a.alert_id = al.id), "
                "       (SELECT count(DISTINCT alert_id) FROM a), (SELECT count(*) FROM a), "
                "       (SELECT count(*) FROM steps WHERE action_id IN (SELECT id FROM a)), "
                "       (SELECT count(*) FROM events WHERE action_id IN (SELECT id FROM a))",
                {"rule": rule},
            )[0],
            strict=True,
        )
    )
    accepted = sum(v for r in runs for k, v in r["statuses"].items() if 200 <= k < 300) + 500
    accepted += sum(int(w["sent"] - w["non_2xx"]) for w in wrk_runs)
    return {
        "storms": runs,
        "wrk": wrk_runs,
        "rss": rss.by_phase(),
        "journal_rows": counts,
        "accepted": accepted,
        "sample_payload": sample[0][0] if sample else alerts.payload(0),
        "sample_plan": sample[0][1] if sample else {},
    }


def pgbench_run(
    env: BenchEnv, ingest: dict[str, Any], per_alert: dict[str, float], per_transaction: int = 1
) -> dict[str, Any]:
    """The same inserts one alert costs our ingest, with the payload and plan it stored,
    `per_transaction` alerts to a transaction; `alerts_per_s` is what PostgreSQL commits."""
    if not pgbench_ceiling.available():
        return {"skipped": "pgbench is not installed"}
    from healer.journal.migrate import upgrade

    dsn = env.database()
    asyncio.run(upgrade(dsn))
    steps = max(1, round(per_alert.get("steps", 1)))
    script = env.path(f"ingest-{per_transaction}.pgbench")
    script.write_text(
        pgbench_ceiling.ingest_script(
            ingest["sample_payload"],
            ingest["sample_plan"],
            steps,
            notify=True,
            per_transaction=per_transaction,
        )
    )
    out = pgbench_ceiling.run(dsn, script, clients=CONCURRENCY, seconds=10)
    out["script"] = script.read_text()
    out["per_transaction"] = per_transaction
    out["alerts_per_s"] = out["tps"] * per_transaction
    return out


def run(env: BenchEnv, quick: bool = False) -> dict[str, Any]:
    count = 2_000 if quick else STORM
    out: dict[str, Any] = {}
    log("healer: bare aiohttp ceiling")
    out["bare"] = bare_ceiling(env, count)
    healer = start_healer(env, "healer-ingest", [INGEST_RULE, LATENCY_RULE])
    log("healer: start latency")
    out["start_latency"] = start_latency(healer, 10 if quick else 30)
    log("healer: ingest storms")
    out["ingest"] = ingest = ingest_storms(env, healer, 1 if quick else 2, count)
    healer.proc.stop()
    rows = ingest["journal_rows"]
    per_alert = {t: ratio(n, rows["alerts"]) for t, n in rows.items()}
    out["inserts_per_alert"] = per_alert
    log("healer: pgbench ceiling")
    out["pgbench"] = pg = pgbench_run(env, ingest, per_alert)
    # The same inserts in transactions as large as the healer's own batches: the journal's
    # limit for what the group commit does.
    batch = max(1, round(statistics.median(s["per_transaction"] for s in ingest["storms"])))
    out["pgbench_batched"] = pgb = pgbench_run(env, ingest, per_alert, batch)

    storms, wrk_runs = ingest["storms"], ingest["wrk"]
    best = max([s["rate"] for s in storms] + [w["rate"] for w in wrk_runs])
    wrk16 = [w["rate"] for w in wrk_runs if w["connections"] == CONCURRENCY]
    table = Table(
        f"Alert ingest: single-alert notifications, {count:,} per Python-client storm, "
        f"{CONCURRENCY} connections unless said",
        [
            "server",
            "alerts/s",
            "share of bare aiohttp",
            "share of pgbench",
            "POST p50 ms",
            "POST p99 ms",
            "server CPU s",
            "client CPU s",
            "notifications per journal transaction",
        ],
    )
    bare = out["bare"]
    pg_tps = pg.get("tps", float("nan"))
    table.add(
        "bare aiohttp handler (reads the body, answers 200)",
        bare["rate"],
        1.0,
        ratio(bare["rate"], pg_tps),
        bare["latency"]["p50_ms"],
        bare["latency"]["p99_ms"],
        bare["server_cpu_s"],
        bare["client_cpu_s"],
        float("nan"),
    )
    for n, s in enumerate(storms, 1):
        table.add(
            f"taskmedic POST /alerts, storm {n} (target >= 1,000)",
            s["rate"],
            ratio(s["rate"], bare["rate"]),
            ratio(s["rate"], pg_tps),
            s["latency"]["p50_ms"],
            s["latency"]["p99_ms"],
            s["server_cpu_s"],
            s["client_cpu_s"],
            s["per_transaction"],
        )
    bare_wrk = bare.get("wrk")
    if bare_wrk is not None and wrk_runs:
        table.add(
            f"bare aiohttp handler, wrk client ({WRK_SECONDS} s)",
            bare_wrk["rate"],
            1.0,
            ratio(bare_wrk["rate"], pg_tps),
            bare_wrk.get("p50_ms", float("nan")),
            bare_wrk.get("p99_ms", float("nan")),
            bare_wrk["server_cpu_s"],
            float("nan"),
            float("nan"),
        )
        for n, wrk in enumerate(wrk_runs, 1):
            table.add(
                f"taskmedic POST /alerts, wrk client, run {n}: {wrk['connections']} connections "
                f"({WRK_SECONDS} s; target >= 1,000)",
                wrk["rate"],
                ratio(wrk["rate"], bare_wrk["rate"]),
                ratio(wrk["rate"], pg_tps),
                wrk.get("p50_ms", float("nan")),
                wrk.get("p99_ms", float("nan")),
                wrk["server_cpu_s"],
                float("nan"),
                wrk["per_transaction"],
            )
    table.add(
        "pgbench, same inserts per transaction (no HTTP)",
        pg_tps,
        ratio(pg_tps, bare["rate"]),
        1.0,
        float("nan"),
        float("nan"),
        float("nan"),
        float("nan"),
        1.0,
    )
    if "alerts_per_s" in pgb:
        table.add(
            f"pgbench, the same inserts {pgb['per_transaction']} alerts to a transaction",
            pgb["alerts_per_s"],
            ratio(pgb["alerts_per_s"], bare["rate"]),
            ratio(pgb["alerts_per_s"], pg_tps),
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            float(pgb["per_transaction"]),
        )
        limit = pgb["alerts_per_s"]
        top = max(s["rate"] for s in storms)
        shares = f"the best Python-client storm is {ratio(top, limit):.2f}"
        if wrk16:
            share = ratio(statistics.median(wrk16), limit)
            shares += f", the median wrk storm at {CONCURRENCY} connections {share:.2f}"
        table.notes.append(
            f"Against the journal's limit at the healer's own batch size "
            f"({pgb['per_transaction']} alerts a transaction, {limit:,.0f} alerts/s): {shares}."
        )
    table.notes.append(
        "Journal rows per alert after the storms: "
        + ", ".join(f"{t} {v:.2f}" for t, v in per_alert.items())
        + f"; {ingest['accepted']:,} alerts answered 2xx, {rows['alerts']:,} in the journal."
    )
    table.notes.append(
        "pgbench: -M prepared, one transaction per alert with those inserts (the payload and "
        "plan our ingest stored) plus one pg_notify, but not the advisory lock and cooldown "
        f"lookup our ingest also runs; {CONCURRENCY} clients, 10 s, same server and schema. "
        "Server CPU is the healer process (or the bare app); the client is this process."
    )
    table.notes.append(
        "Notifications per journal transaction: the healer's group commit "
        "(taskmedic_ingest_batch_notifications sum / count over the storm). pgbench commits "
        "one alert per transaction, so against it the healer's share can pass 1."
    )
    if wrk_runs:
        table.notes.append(
            f"wrk: {sum(w['sent'] for w in wrk_runs):,.0f} requests, "
            f"{sum(w['non_2xx'] for w in wrk_runs):,.0f} not 2xx; their rows are in the journal "
            "counts above (with the requests still in flight when wrk stopped, recorded but not "
            "counted by wrk). The wrk rows' share of bare aiohttp is against the bare handler "
            f"under wrk at {CONCURRENCY} connections. The last run has 64 connections: a storm "
            "of many aggregation groups reaches the healer on as many connections (Alertmanager "
            "sets no limit per host), and the group commit then makes larger batches."
        )
    else:
        table.notes.append("wrk is not installed: no wrk rows (apt-get install wrk).")
    if wrk16:
        table.notes.append(
            f"Median of the wrk storms at {CONCURRENCY} connections: "
            f"{statistics.median(wrk16):,.0f} alerts/s."
        )
    table.notes.append(f"Best storm: {best:,.0f} alerts/s.")
    out["throughput_table"] = {"table": table.show()}

    rss = ingest["rss"]
    mem = Table(
        "Healer RSS under alert storms (MiB, sampled every 100 ms)",
        ["phase", "samples", "min", "max", "last"],
    )
    for phase, v in rss.items():
        mem.add(phase, int(v["n"]), v["min_mib"], v["max_mib"], v["last_mib"])
    last_after = [v["last_mib"] for p, v in rss.items() if re.fullmatch(r"after \d+", p)]
    if len(last_after) >= 2:
        out["rss_growth_between_storms_mib"] = last_after[-1] - last_after[-2]
        mem.notes.append(
            f"Growth from after storm 1 to after storm 2: {last_after[-1] - last_after[-2]:+.1f} "
            f"MiB for {count:,} more alerts."
        )
    out["memory_table"] = {"table": mem.show()}
    out["best_rate"] = best
    out["median_rate"] = statistics.median(s["rate"] for s in storms)
    if wrk16:
        out["median_wrk_rate"] = statistics.median(wrk16)
    if alertmanager_storm.available():
        log("healer: a storm from a real Alertmanager")
        fresh = start_healer(env, "healer-am", [INGEST_RULE])
        out["alertmanager"] = am = alertmanager_storm.run(env, fresh, count, storms=3)
        fresh.proc.stop()
        out["alertmanager_table"] = {"table": _alertmanager_table(am)}
    else:
        log("healer: Alertmanager is not installed; no Alertmanager storm")
    return out


def _alertmanager_table(am: dict[str, Any]) -> str:
    storms = am["storms"]
    table = Table(
        f"Storms from a real Alertmanager: {storms[0]['alerts']:,} alerts each, every alert "
        "its own group (group_by: ['...']) and its own notification",
        ["figure", *(f"storm {n}" for n in range(1, len(storms) + 1))],
    )

    def row(name: str, cell: Callable[[dict[str, Any]], str]) -> None:
        table.add(name, *(cell(s) for s in storms))

    row(
        "alerts recorded / actions (one per alert)",
        lambda s: f"{s['recorded']:,} / {s['actions']:,}",
    )
    row(
        "ingest, first to last commit (target >= 1,000 alerts/s)",
        lambda s: f"{s['rate']:,.0f} alerts/s over {s['span_s']:.1f} s",
    )
    row("busiest second", lambda s: f"{s['peak_second']:,} alerts")
    row("notifications per journal transaction", lambda s: f"{s['per_transaction']:.1f}")
    row(
        "Alertmanager: notifications sent / failed; requests / failed requests",
        lambda s: (
            f"{s['notifications']:,.0f} / {s['failed_notifications']:,.0f}; "
            f"{s['requests']:,.0f} / {s['failed_requests']:,.0f}"
        ),
    )
    row(
        "Alertmanager: mean notification latency (waiting for the healer's answer)",
        lambda s: f"{s['mean_latency_s']:.2f} s",
    )
    row(
        "CPU seconds while it delivered: healer / Alertmanager / PostgreSQL",
        lambda s: (
            f"{s['cpu_s']['healer']:.1f} / {s['cpu_s']['alertmanager']:.1f} / "
            f"{s['cpu_s']['postgres']:.1f}"
        ),
    )
    row(
        "healer RSS, MiB: highest during / 3 s after",
        lambda s: f"{s['rss_max_mib']:.1f} / {s['rss_after_mib']:.1f}",
    )
    table.notes.append(
        f"Healer RSS before the first storm: {am['rss_before_mib']:.1f} MiB. It rises with the "
        "requests in flight at once (here up to 10,000, each waiting for the journal) and the "
        "allocator keeps its highest level afterwards; a storm that has no more in flight than "
        "an earlier one adds nothing."
    )
    table.notes.append(
        f"Alertmanager waits group_wait ({alertmanager_storm.GROUP_WAIT_S} s) after the alerts "
        f"arrive (about {storms[0]['post_s']:.1f} s to post them through its API), then flushes "
        "every group at once, each on its own connection. The rate is the journal's: alerts "
        "recorded from the first commit to the last. All three processes share the 2 cores."
    )
    return table.show()
