"""One script step on 50 hosts at once, through real `taskmedic agent` processes.

50 host queues (h00..h49) on this run's Redis database are served by `taskmedic agent`
processes (several hosts per process: `--queue h00 --queue h01 ...`, one Celery worker with a
thread per host); the journal is a PostgreSQL database of its own, migrated, and the agents
write their runs into it. An in-process Executor (the healer's) claims one action whose single
script step runs `true` on all the hosts, and the run is read back from `host_runs`:

- from the step's start until every host run started, and until every one finished, against
  the same script run by the healer locally: a 50-step local plan through the same Executor
  (sequential, as a plan runs), and 50 concurrent `run_script` calls in this process;
- per-host overhead: finished_at - sent_at of each host run minus the script's own runtime,
  measured with `run_script` here (the median of 50 sequential runs);
- journal writes per host run: pg_stat_database's xact_commit and tup_inserted + tup_updated
  for the journal database, before and after, minus an idle window of the same length.

Each scenario is repeated (3 times, 1 with --quick) and the median is reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
import yaml
from psycopg.rows import dict_row

from bench.env import BenchEnv
from bench.harness import Proc, Table, log, percentile, ratio, wait_until
from exporter.config import Config
from healer.agents.settings import AgentsSettings
from healer.agents.transport import agents_app
from healer.executor import Executor
from healer.journal.migrate import upgrade
from healer.metrics import HealerMetrics
from healer.plan import HostsSpec, Plan, PlanStep, ScriptSpec
from healer.steps.output_capture import OutputChunk, StepOutput
from healer.steps.script import run_script
from tests.support.journal_helpers import insert_action

ARGV = ["true"]
# Backends publish their statistics at the latest 10 s after going idle (PostgreSQL 15+).
STATS_SETTLE = 11.0


@dataclass
class Sizes:
    hosts: int
    processes: int
    repeats: int


def sizes(quick: bool) -> Sizes:
    """10 hosts once with --quick, else 50 hosts 3 times; TASKMEDIC_FANOUT_AGENTS sets how many
    agent processes share the hosts (default 2 with --quick, else 10: 5 hosts each)."""
    size = Sizes(hosts=10, processes=2, repeats=1) if quick else Sizes(50, 10, 3)
    if agents := os.environ.get("TASKMEDIC_FANOUT_AGENTS"):
        size.processes = max(1, min(size.hosts, int(agents)))
    return size


# --- agents ---------------------------------------------------------------------------------


def start_agents(
    env: BenchEnv, section: dict[str, Any], hosts: list[str], processes: int
) -> list[Proc]:
    """`processes` agents, each serving an equal share of `hosts` with a thread per host."""
    share = -(-len(hosts) // processes)
    groups = [hosts[i : i + share] for i in range(0, len(hosts), share)]
    procs = []
    for n, group in enumerate(groups):
        config = env.path(f"fanout-agent-{n}.yaml")
        config.write_text(yaml.safe_dump({"agents": {**section, "concurrency": len(group)}}))
        argv = [sys.executable, "-m", "healer.cli", "agent", "--config", str(config)]
        for host in group:
            argv += ["--queue", host]
        procs.append(env.proc(argv, f"fanout-agent-{n}"))
    settings = AgentsSettings.model_validate(section)
    app = agents_app(settings, name="fanout-bench")
    wanted = {settings.queue(h) for h in hosts}

    def all_served() -> bool:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"an agent exited:\n{p.output()}")
        queues = app.control.inspect(timeout=1.0).active_queues() or {}
        return wanted <= {q["name"] for qs in queues.values() for q in qs or []}

    try:
        wait_until(all_served, 120, f"{len(procs)} agents to serve {len(hosts)} queues", 0.5)
    finally:
        app.close()
    return procs


# --- the journal's own counters -------------------------------------------------------------


async def db_counters(dsn: str) -> dict[str, int]:
    """The journal database's commits, rows inserted and updated (and per table), as the server
    counts them."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        row = await cur.fetchone()
        assert row is not None
        out = {"commits": int(row[0]), "inserted": int(row[1]), "updated": int(row[2])}
        cur = await conn.execute("SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables")
        for name, ins, upd in await cur.fetchall():
            out[f"{name}.ins"] = int(ins)
            out[f"{name}.upd"] = int(upd)
    return out


async def rows(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def wait_done(dsn: str, action_id: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (row,) = await rows(dsn, "SELECT * FROM actions WHERE id = %s", action_id)
        if row["state"] in ("succeeded", "failed", "cancelled"):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"action {action_id} did not finish within {timeout}s")


async def counted(dsn: str, coro: Any) -> tuple[Any, dict[str, int]]:
    """Run `coro`, then let the statistics settle; returns its result and the counters' rise."""
    before = await db_counters(dsn)
    result = await coro
    await asyncio.sleep(STATS_SETTLE)
    after = await db_counters(dsn)
    return result, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# --- the scenarios --------------------------------------------------------------------------


def fanout_plan(hosts: list[str]) -> Plan:
    on = HostsSpec(hosts=hosts)
    step = PlanStep(name="fanout", kind="script", on=on, script=ScriptSpec(argv=ARGV))
    return _plan([step])


def local_plan(n: int) -> Plan:
    return _plan(
        [PlanStep(name=f"local-{i}", kind="script", script=ScriptSpec(argv=ARGV)) for i in range(n)]
    )


def _plan(steps: list[PlanStep]) -> Plan:
    alert = {"labels": {"alertname": "FanoutBench"}, "status": "firing"}
    return Plan(rule="fanout-bench", steps=steps, alert=alert)


async def run_fanout(dsn: str, hosts: list[str]) -> dict[str, Any]:
    action_id = await insert_action(dsn, fanout_plan(hosts))
    action = await wait_done(dsn, action_id)
    if action["state"] != "succeeded":
        raise RuntimeError(f"fan-out action {action_id} {action['state']}: {action['reason']}")
    (step,) = await rows(dsn, "SELECT * FROM steps WHERE action_id = %s", action_id)
    runs = await rows(dsn, "SELECT * FROM host_runs WHERE action_id = %s", action_id)
    if len(runs) != len(hosts) or any(r["state"] != "succeeded" for r in runs):
        raise RuntimeError(f"fan-out action {action_id}: host runs {runs}")
    # sent_at is stamped for the whole batch before its messages go out (in one call, on one
    # producer); the healer's "hNN: sent to QUEUE" lines are stamped when that call returns.
    lines = await rows(
        dsn,
        "SELECT at, convert_from(data, 'UTF8') AS text FROM log_chunks"
        " WHERE action_id = %s AND stream = 'system'",
        action_id,
    )
    published = {}
    for line in lines:
        for text in line["text"].splitlines():
            host, _, rest = text.partition(": ")
            if rest.startswith("sent to "):
                published[host] = line["at"]
    if set(published) != set(hosts):
        raise RuntimeError(f"fan-out action {action_id}: no 'sent to' line for some hosts")
    t0 = step["started_at"]
    return {
        "published_s": [(published[r["host"]] - r["sent_at"]).total_seconds() for r in runs],
        "published_to_started_s": [
            (r["started_at"] - published[r["host"]]).total_seconds() for r in runs
        ],
        "published_to_finished_s": [
            (r["finished_at"] - published[r["host"]]).total_seconds() for r in runs
        ],
        "claim_to_step_s": (t0 - action["started_at"]).total_seconds(),
        "all_started_s": (max(r["started_at"] for r in runs) - t0).total_seconds(),
        "all_finished_s": (max(r["finished_at"] for r in runs) - t0).total_seconds(),
        "step_s": (step["finished_at"] - t0).total_seconds(),
        "action_s": (action["finished_at"] - action["started_at"]).total_seconds(),
        "sent_to_started_s": [(r["started_at"] - r["sent_at"]).total_seconds() for r in runs],
        "sent_to_finished_s": [(r["finished_at"] - r["sent_at"]).total_seconds() for r in runs],
    }


async def run_local_plan(dsn: str, n: int) -> dict[str, Any]:
    action_id = await insert_action(dsn, local_plan(n))
    action = await wait_done(dsn, action_id)
    if action["state"] != "succeeded":
        raise RuntimeError(f"local action {action_id} {action['state']}: {action['reason']}")
    steps = await rows(dsn, "SELECT * FROM steps WHERE action_id = %s ORDER BY idx", action_id)
    t0 = steps[0]["started_at"]
    return {
        "all_started_s": (steps[-1]["started_at"] - t0).total_seconds(),
        "all_finished_s": (steps[-1]["finished_at"] - t0).total_seconds(),
        "action_s": (action["finished_at"] - action["started_at"]).total_seconds(),
    }


async def _discard(chunks: Sequence[OutputChunk], output_bytes: int | None) -> None:
    return None


async def one_script() -> float:
    """`run_script` as a local step runs it, output collected and discarded; its seconds."""
    t0 = time.monotonic()
    async with StepOutput(_discard) as out:
        await run_script(ScriptSpec(argv=ARGV), b"{}", out)
    return time.monotonic() - t0


async def scripts_sequential(n: int) -> list[float]:
    return [await one_script() for _ in range(n)]


async def scripts_concurrent(n: int) -> float:
    t0 = time.monotonic()
    await asyncio.gather(*(one_script() for _ in range(n)))
    return time.monotonic() - t0


async def idle_window(dsn: str) -> tuple[None, dict[str, int]]:
    async def nothing() -> None:
        return None

    return await counted(dsn, nothing())


async def repetition(dsn: str, hosts: list[str]) -> dict[str, Any]:
    n = len(hosts)
    seq = await scripts_sequential(n)
    conc = await scripts_concurrent(n)
    fan, fan_writes = await counted(dsn, run_fanout(dsn, hosts))
    loc, loc_writes = await counted(dsn, run_local_plan(dsn, n))
    _, idle_writes = await idle_window(dsn)
    script_s = statistics.median(seq)
    return {
        "fanout": fan,
        "local_plan": loc,
        "script_seq_s": seq,
        "script_median_s": script_s,
        "scripts_concurrent_s": conc,
        "overhead_ms": [(s - script_s) * 1000 for s in fan["sent_to_finished_s"]],
        "overhead_published_ms": [(s - script_s) * 1000 for s in fan["published_to_finished_s"]],
        "writes": {"fanout": fan_writes, "local_plan": loc_writes, "idle": idle_writes},
    }


# --- the run --------------------------------------------------------------------------------


async def _measure(dsn: str, settings: AgentsSettings, hosts: list[str], repeats: int) -> Any:
    executor = Executor(
        dsn, Config(), HealerMetrics(), lease=10.0, poll_interval=1.0, agents=settings
    )
    await executor.start()
    try:
        # One warm-up fan-out: the first message on each queue pays for the agents' imports.
        await run_fanout(dsn, hosts)
        await asyncio.sleep(STATS_SETTLE)  # its counts must not fall into the first repetition
        reps = []
        for i in range(repeats):
            log(f"fanout: repetition {i + 1}/{repeats}")
            reps.append(await repetition(dsn, hosts))
        return reps
    finally:
        await executor.stop(grace=5)


def run(env: BenchEnv, quick: bool = False) -> dict[str, Any]:
    size = sizes(quick)
    hosts = [f"h{i:02d}" for i in range(size.hosts)]
    dsn = env.database()
    asyncio.run(upgrade(dsn))
    prefix = f"tm-fanout-{uuid.uuid4().hex[:6]}."
    key = env.path("fanout-agents-key")
    key.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    section: dict[str, Any] = {
        "broker": env.redis.url,
        "secret_file": str(key),
        "queue_prefix": prefix,
        "reply_queue": prefix + "replies",
        "state_dir": str(env.path("fanout-agent-state")),
        "journal": {"dsn": dsn},
    }
    log(f"fanout: {size.processes} agent processes for {size.hosts} hosts")
    procs = start_agents(env, section, hosts, size.processes)
    rss = [psutil.Process(p.pid).memory_info().rss for p in procs]
    settings = AgentsSettings.model_validate(section)
    reps = asyncio.run(_measure(dsn, settings, hosts, size.repeats))
    rss_after = [psutil.Process(p.pid).memory_info().rss for p in procs]
    for p in procs:
        p.stop()
    return summarize(size, reps, rss, rss_after)


def _med(reps: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in reps:
        node: Any = r
        for key in path:
            node = node[key]
        values.append(float(node))
    return statistics.median(values)


def summarize(
    size: Sizes, reps: list[dict[str, Any]], rss: list[int], rss_after: list[int]
) -> dict[str, Any]:
    n = size.hosts
    fan_start = _med(reps, "fanout", "all_started_s")
    fan_end = _med(reps, "fanout", "all_finished_s")
    loc_start = _med(reps, "local_plan", "all_started_s")
    loc_end = _med(reps, "local_plan", "all_finished_s")
    conc = _med(reps, "scripts_concurrent_s")
    script_ms = _med(reps, "script_median_s") * 1000

    def pct(p: float, *path: str) -> float:
        def one(r: dict[str, Any]) -> float:
            node: Any = r
            for key in path:
                node = node[key]
            return percentile(node, p)

        return statistics.median(one(r) for r in reps)

    def per_run(kind: str, *keys: str) -> float:
        def one(r: dict[str, Any]) -> float:
            w: dict[str, int] = r["writes"][kind]
            idle: dict[str, int] = r["writes"]["idle"]
            return sum(w.get(k, 0) - idle.get(k, 0) for k in keys) / n

        return statistics.median(one(r) for r in reps)

    times = Table(
        f"One `true` step on {n} hosts vs the same script run {n} times locally "
        f"(median of {len(reps)})",
        ["run", f"until all {n} started, ms", f"until all {n} finished, ms", "vs fan-out"],
    )
    times.add(f"fan-out to {n} hosts (agents)", fan_start * 1000, fan_end * 1000, "1.00")
    times.add(
        f"local plan of {n} steps (same Executor)",
        loc_start * 1000,
        loc_end * 1000,
        f"{ratio(loc_end, fan_end):.2f}x",
    )
    times.add(
        f"{n} concurrent run_script, no journal", "n/a", conc * 1000, f"{ratio(conc, fan_end):.2f}x"
    )
    times.notes += [
        "Times from the step's start (steps.started_at) to the last host_runs.started_at and "
        "finished_at; for the local plan, from the first step's start to the last step's "
        "start and finish. 'vs fan-out' is that row's finish time over the fan-out's.",
        f"Action claim to step start for the fan-out: "
        f"{_med(reps, 'fanout', 'claim_to_step_s') * 1000:.0f} ms (median).",
        f"{size.processes} `taskmedic agent` processes, {-(-n // size.processes)} host queues "
        f"each (one Celery thread per host); agent RSS after start "
        f"{statistics.median(rss) / 2**20:.0f} MiB median, {sum(rss) / 2**20:.0f} MiB in all; "
        f"after the runs {statistics.median(rss_after) / 2**20:.0f} MiB median.",
    ]
    per_host = Table(
        f"Per host run, {n} hosts at once (median over {len(reps)} repetitions of each figure)",
        ["figure", "p50 ms", "p95 ms"],
    )

    def ms(label: str, key: str) -> None:
        per_host.add(label, pct(50, "fanout", key) * 1000, pct(95, "fanout", key) * 1000)

    per_host.add("the script's own runtime (local run_script)", script_ms, "")
    per_host.add(
        "**overhead: finished_at - sent_at - script (goal p50 < 100)**",
        pct(50, "overhead_ms"),
        pct(95, "overhead_ms"),
    )
    ms("sent_at -> started_at", "sent_to_started_s")
    ms("sent_at -> the whole batch published (the 'sent to' lines)", "published_s")
    writes = Table(
        f"Journal writes per host run and per local step (median of {len(reps)})",
        ["", "per host run (fan-out)", "per local step (local plan)"],
    )
    for label, keys in (
        ("transactions committed (read-only ones too)", ("commits",)),
        ("rows inserted + updated", ("inserted", "updated")),
        ("rows inserted", ("inserted",)),
        ("rows updated", ("updated",)),
    ):
        writes.add(label, per_run("fanout", *keys), per_run("local_plan", *keys))
    tables = sorted(
        {
            k.rsplit(".", 1)[0]
            for r in reps
            for kind in ("fanout", "local_plan")
            for k in r["writes"][kind]
            if "." in k
        }
    )
    for table in tables:
        ins, upd = f"{table}.ins", f"{table}.upd"
        writes.add(
            f"`{table}` inserted / updated",
            f"{per_run('fanout', ins):.2f} / {per_run('fanout', upd):.2f}",
            f"{per_run('local_plan', ins):.2f} / {per_run('local_plan', upd):.2f}",
        )
    per_host.notes += [
        "Overhead = host_runs.finished_at - sent_at minus the script's runtime as run_script "
        f"measures it here (median of {n} sequential runs in the same repetition).",
        "sent_at is stamped once for the whole batch (one UPDATE) before the healer publishes "
        "its messages in one call; the healer's own `hNN: sent to QUEUE` lines in log_chunks "
        "are stamped when that call returned.",
    ]
    writes.notes += [
        "pg_stat_database (xact_commit, tup_inserted, tup_updated) and pg_stat_user_tables "
        "(n_tup_ins, n_tup_upd) of the journal database across one action and "
        f"{STATS_SETTLE:.0f} s after it (backends publish their counts late), minus an idle "
        f"window of the same length (the executor's polling), divided by {n}. xact_commit "
        "counts every transaction, read-only ones included. The figures include the action's "
        "own rows (its insertion, claim, step and end), spread over the hosts or steps.",
    ]
    return {
        "sizes": size.__dict__,
        "repetitions": reps,
        "agent_rss_bytes": rss,
        "agent_rss_after_bytes": rss_after,
        "times": {"table": times.show()},
        "per_host": {"table": per_host.show()},
        "writes": {"table": writes.show()},
    }
