"""Worker deaths: how long after a `kill -9` each tool reports the worker down, and drops it.

One kill is watched by every tool at once: taskmedic's exporter (whatever code is checked out)
and the peers of bench/death_peers.py all listen to the same broker. Each kill lands at a
uniformly random phase of the worker's heartbeat interval (2 s, Celery's default): after a
heartbeat arrives, the harness waits U(0, 2 s), then kills the worker's process group. From
that instant every tool's /metrics is read every 50 ms for `WINDOW` seconds; whatever has not
happened by then is censored ("> 20 s"). The same kill also leaves a status row in PostgreSQL
whose task was running on the worker: the time until taskmedic's orphan_tasks check reports it
`lost` is measured too.

Celery's own rule (`celery.events.state.Worker.alive`) calls a worker dead two heartbeat
intervals after the last heartbeat was received; for each kill that moment is known from the
harness's own event receiver, and it is the baseline the ratios compare with.

Brokers: Redis (a database of its own on 127.0.0.1:6379) and RabbitMQ (a vhost of its own on
127.0.0.1:5672, created with rabbitmqctl and deleted afterwards). Neither service is restarted.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery

from bench import death_peers
from bench.death_peers import TASKMEDIC_CLUSTER, Watcher
from bench.env import BenchEnv
from bench.harness import RESULTS, ROOT, Proc, Table, log, percentile, serve_on_free_port
from bench.metrics_text import samples
from tests.services import reachable
from tests.support.exporter_helpers import pg_exec

HEARTBEAT = 2.0  # the workers' --heartbeat-interval, Celery's default
RULE = 2 * HEARTBEAT  # Celery's rule: dead two intervals after the last heartbeat
WINDOW = 20.0
POLL = 0.05
CHECK = "deathbench"
PLOT = ROOT / "bench" / "deaths.png"
JOBS_SQL = "SELECT id, celery_task_id, updated_at FROM deathbench_jobs WHERE status = 'processing'"


@dataclass
class Broker:
    name: str
    url: str
    backend: str


@dataclass
class Kill:
    phase_s: float  # from the last heartbeat received to the kill
    rule_s: float  # from the kill to Celery's rule calling the worker dead
    down_s: dict[str, float | None] = field(default_factory=dict)
    gone_s: dict[str, float | None] = field(default_factory=dict)
    orphan_s: float | None = None
    # What was not so before the kill: a tool that never listed the worker as up, or
    # "orphans clear" when taskmedic already reported an orphan (its orphan time is then left out).
    not_ready: list[str] = field(default_factory=list)


# --- brokers --------------------------------------------------------------------------------


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str | None]:
    """A vhost of this run's own on the shared RabbitMQ (the URL), deleted afterwards; None
    with the reason logged when RabbitMQ or rabbitmqctl is not there."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or not reachable("127.0.0.1", 5672):
        log("deaths: RabbitMQ skipped (no rabbitmqctl, or nothing on 127.0.0.1:5672)")
        yield None
        return
    vhost = f"taskmedic-deathbench-{uuid.uuid4().hex[:8]}"

    def ctl_run(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], check=True, timeout=120, capture_output=True)

    ctl_run("add_vhost", vhost)
    try:
        ctl_run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        ctl_run("delete_vhost", vhost)


# --- the harness's own view of heartbeats ---------------------------------------------------


class Heartbeats:
    """Receives worker heartbeats on the broker, as every tool does, to time each kill."""

    def __init__(self, broker: str) -> None:
        self.app = Celery(broker=broker)
        self.last: dict[str, float] = {}
        self._cond = threading.Condition()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on(self, event: dict[str, Any]) -> None:
        with self._cond:
            self.last[event["hostname"]] = time.time()
            self._cond.notify_all()

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(
                conn, handlers={"worker-heartbeat": self._on, "worker-online": self._on}
            )
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def next_after(self, hostname: str, after: float, timeout: float) -> float:
        """The receive time of the first heartbeat of `hostname` later than `after`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.last.get(hostname, 0.0) <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no heartbeat from {hostname} within {timeout} s")
                self._cond.wait(left)
            return self.last[hostname]

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)
        self.app.close()


# --- processes ------------------------------------------------------------------------------


def start_worker(env: BenchEnv, broker: Broker, hostname: str) -> Proc:
    argv = [sys.executable, "-m", "celery", "-A", "bench.death_app", "worker", "-E"]
    argv += ["-P", "threads", "-c", "2", "-Q", "celery", "-n", hostname]
    argv += ["--without-mingle", "--without-gossip", f"--heartbeat-interval={HEARTBEAT:g}"]
    argv += ["-l", "INFO"]
    worker_env = {"DEATHBENCH_BROKER": broker.url, "DEATHBENCH_BACKEND": broker.backend}
    return env.proc(argv, f"{broker.name}-worker-{hostname.split('@')[0]}", env=worker_env)


def cluster_extra() -> dict[str, Any]:
    """Settings added to taskmedic's cluster, from `$DEATHBENCH_CLUSTER` (a YAML mapping):
    an option the checked-out exporter has and its defaults leave off is tried this way
    without editing the benchmark."""
    text = os.environ.get("DEATHBENCH_CLUSTER", "")
    extra = yaml.safe_load(text) if text else {}
    if not isinstance(extra, dict):
        raise SystemExit(f"$DEATHBENCH_CLUSTER must be a YAML mapping, not {text!r}")
    return extra


def taskmedic_config(env: BenchEnv, dsn: str, broker: Broker) -> Any:
    extra = cluster_extra()

    def write(url: str, port: int) -> Path:
        path = env.path(f"taskmedic-{broker.name}.yaml")
        config = {
            "databases": {"app": {"dsn": dsn}},
            "celery": {
                TASKMEDIC_CLUSTER: {
                    "broker": url,
                    "backend": broker.backend,
                    "queues": ["celery"],
                    "inspect_timeout": "0.5s",
                    **extra,
                }
            },
            "exporter": {"listen": f"127.0.0.1:{port}", "interval": "0.5s", "timeout": "5s"},
            "checks": [
                {
                    "name": CHECK,
                    "type": "orphan_tasks",
                    "database": "app",
                    "celery": TASKMEDIC_CLUSTER,
                    "grace": "1m",
                    "query": JOBS_SQL,
                }
            ],
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


def start_watchers(
    env: BenchEnv, broker: Broker, watchers: list[Watcher]
) -> dict[str, tuple[Proc, int]]:
    started: dict[str, tuple[Proc, int]] = {}
    for w in watchers:
        slug = "".join(c if c.isalnum() else "-" for c in w.name.lower())
        log_path = env.path(f"{broker.name}-{slug}.log")

        def start(port: int, w: Watcher = w, log_path: Path = log_path) -> Proc:
            return env.adopt(w.start(broker.url, port, log_path))

        started[w.name] = serve_on_free_port(start, w.ready_path, w.name, timeout=90)
        log(f"deaths[{broker.name}]: {w.name} on port {started[w.name][1]}")
    return started


# --- reading /metrics -----------------------------------------------------------------------


def page(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def orphans(text: str) -> float:
    for (name, labels), v in samples(text).items():
        d = dict(labels)
        if name == "taskmedic_orphan_tasks" and d == {"check": CHECK, "reason": "lost"}:
            return v
    return 0.0


def wait_ready(
    watchers: list[Watcher], ports: dict[str, int], hostname: str, timeout: float
) -> list[str]:
    """Wait until every tool lists the worker as up and taskmedic reports no orphan; the
    names of the tools that never did."""
    deadline = time.monotonic() + timeout
    pending = {w.name for w in watchers} | {"orphans clear"}
    while pending and time.monotonic() < deadline:
        for w in watchers:
            # taskmedic is read until its orphan gauge is clear too, even once it lists the
            # worker: the previous kill's row, just marked done, clears at its next collection.
            if w.name in pending or (w.name == "taskmedic" and "orphans clear" in pending):
                text = page(ports[w.name])
                value = w.read(text, hostname) if text is not None else None
                if value is not None and value >= 1:
                    pending.discard(w.name)
                if w.name == "taskmedic" and text is not None and orphans(text) == 0:
                    pending.discard("orphans clear")
        time.sleep(0.2)
    return sorted(pending)


def observe(
    w: Watcher, port: int, hostname: str, t0: float, kill: Kill, stop: threading.Event
) -> None:
    """Read `w`'s page every POLL s from the kill `t0` until it said down and dropped the
    worker (and, for taskmedic, the orphan) or the window closed. A time is taken when the
    answer arrived: what a scraper would know then."""
    down: float | None = None
    gone: float | None = None
    orphan: float | None = None
    track_orphan = w.name == "taskmedic"
    while time.monotonic() - t0 < WINDOW and not stop.is_set():
        text = page(port)
        t = time.monotonic() - t0
        if text is not None and t < WINDOW:
            value = w.read(text, hostname)
            if down is None and (value is None or value < 1):
                down = t
            if w.per_worker and gone is None and value is None:
                gone = t
            if track_orphan and orphan is None and orphans(text) >= 1:
                orphan = t
        if (
            down is not None
            and (gone is not None or not w.per_worker)
            and (orphan is not None or not track_orphan)
        ):
            break
        time.sleep(POLL)
    kill.down_s[w.name] = down
    kill.gone_s[w.name] = gone if w.per_worker else None
    if track_orphan:
        kill.orphan_s = orphan


# --- one broker -----------------------------------------------------------------------------


def run_broker(
    env: BenchEnv, broker: Broker, dsn: str, peers: list[Watcher], kills: int
) -> list[Kill]:
    watchers = [death_peers.taskmedic_watcher(taskmedic_config(env, dsn, broker)), *peers]
    started = start_watchers(env, broker, watchers)
    ports = {name: port for name, (_, port) in started.items()}
    client = Celery(broker=broker.url, backend=broker.backend)
    out: list[Kill] = []
    rng = random.Random()
    try:
        with Heartbeats(broker.url) as beats:
            for k in range(kills):
                tag = uuid.uuid4().hex[:6]
                hostname = f"deathbench-{tag}@dk-{tag}"
                worker = start_worker(env, broker, hostname)
                task_id = f"deathbench-{tag}"
                client.send_task("deathbench.hold", args=[3600], task_id=task_id, queue="celery")
                deadline = time.monotonic() + 60
                while client.AsyncResult(task_id).state != "STARTED":
                    if time.monotonic() > deadline or not worker.alive():
                        raise RuntimeError(f"task never started on {hostname}:\n{worker.output()}")
                    time.sleep(0.1)
                pg_exec(
                    dsn,
                    "INSERT INTO deathbench_jobs VALUES (%s, 'processing', %s, "
                    "now() - interval '1 hour')",
                    (task_id, task_id),
                )
                missing = wait_ready(watchers, ports, hostname, timeout=45)
                if missing:
                    log(f"deaths[{broker.name}]: before kill {k + 1}, never up in: {missing}")
                heartbeat = beats.next_after(hostname, time.time(), timeout=3 * HEARTBEAT)
                time.sleep(max(0.0, heartbeat + rng.uniform(0, HEARTBEAT) - time.time()))
                t0 = time.monotonic()
                killed_at = time.time()
                os.killpg(worker.pid, signal.SIGKILL)
                last = beats.last[hostname]
                kill = Kill(
                    phase_s=killed_at - last, rule_s=last + RULE - killed_at, not_ready=missing
                )
                stop = threading.Event()
                threads = [
                    threading.Thread(
                        target=observe, args=(w, ports[w.name], hostname, t0, kill, stop)
                    )
                    for w in watchers
                    if w.name not in missing
                ]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join(timeout=WINDOW + 15)
                stop.set()
                worker.stop()
                pg_exec(dsn, "UPDATE deathbench_jobs SET status = 'done' WHERE id = %s", (task_id,))
                out.append(kill)
                log(
                    f"deaths[{broker.name}] kill {k + 1}/{kills}: phase {kill.phase_s:.2f} s, "
                    + ", ".join(f"{n} {_s(v)}" for n, v in kill.down_s.items())
                    + f", orphan {_s(kill.orphan_s)}"
                )
    finally:
        client.close()
        for proc, _ in started.values():
            proc.stop()
    return out


def _s(v: float | None) -> str:
    return f"> {WINDOW:.0f} s" if v is None else f"{v:.2f} s"


# --- figures --------------------------------------------------------------------------------


def _times(values: list[float | None]) -> list[float]:
    return [math.inf if v is None else v for v in values]


def _stat(values: list[float], p: float) -> float:
    return percentile(values, p) if values else math.nan


def _show(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"> {WINDOW:.0f}" if math.isinf(v) else f"{v:.2f}"


def _ratio(ours: float, theirs: float) -> str:
    if math.isnan(ours) or math.isnan(theirs):
        return "n/a"
    if math.isinf(theirs):
        return "n/a" if math.isinf(ours) else f"< {ours / WINDOW:.2f}"
    if math.isinf(ours):
        return f"> {WINDOW / theirs:.1f}"
    return f"{ours / theirs:.2f}"


def summarize(
    broker: str, kills: list[Kill], names: list[str], per_worker_names: set[str]
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    series: dict[str, list[float]] = {"Celery's heartbeat rule": [k.rule_s for k in kills]}
    for name in names:
        series[name] = _times([k.down_s.get(name) for k in kills if name in k.down_s])
    series["taskmedic: orphan row"] = _times(
        [k.orphan_s for k in kills if "orphans clear" not in k.not_ready]
    )
    ours = series["taskmedic"]
    table = Table(
        f"Worker deaths on {broker}: seconds from `kill -9` to the tool reporting it "
        f"({len(kills)} kills, window {WINDOW:.0f} s)",
        [
            "tool",
            "reports down: median",
            "p90",
            "p99",
            "max",
            "censored",
            "stops listing it: median",
            "taskmedic / this (median)",
            "taskmedic / this (p99)",
        ],
    )
    for name, values in series.items():
        gone = _times([k.gone_s.get(name) for k in kills if name in k.gone_s])
        per_worker = name in per_worker_names
        rows[name] = {
            "n": len(values),
            "median_s": _stat(values, 50),
            "p90_s": _stat(values, 90),
            "p99_s": _stat(values, 99),
            "max_s": max(values) if values else math.nan,
            "censored": sum(math.isinf(v) for v in values),
            "gone_median_s": _stat(gone, 50) if per_worker else None,
            "gone_censored": sum(math.isinf(v) for v in gone) if per_worker else None,
            "times_s": values,
        }
        r = rows[name]
        table.add(
            name,
            _show(r["median_s"]),
            _show(r["p90_s"]),
            _show(r["p99_s"]),
            _show(r["max_s"]),
            f"{r['censored']}/{r['n']}",
            (
                f"{_show(r['gone_median_s'])} ({r['gone_censored']} censored)"
                if per_worker
                else ("n/a (a count)" if name in names else "")
            ),
            "" if name.startswith("taskmedic") else _ratio(_stat(ours, 50), r["median_s"]),
            "" if name.startswith("taskmedic") else _ratio(_stat(ours, 99), r["p99_s"]),
        )
    phases = [k.phase_s for k in kills]
    table.notes.append(
        f"Kill phase after the last heartbeat: {min(phases):.2f} to {max(phases):.2f} s "
        f"(heartbeat every {HEARTBEAT:g} s). Celery's rule: dead {RULE:g} s after the last "
        "heartbeat received, timed by the harness's own event receiver."
    )
    for k in kills:
        if k.not_ready:
            table.notes.append(
                f"Before the kill at phase {k.phase_s:.2f} s, within 45 s: "
                + ", ".join(
                    "taskmedic reported an orphan already (a running task judged lost; this "
                    "kill's orphan time is left out)"
                    if n == "orphans clear"
                    else f"{n} never listed the worker as up"
                    for n in k.not_ready
                )
                + "."
            )
    table.notes.append(
        "`> 20` is censored: not seen within the window. The orphan row is taskmedic's "
        "orphan_tasks check (interval 0.5 s, two collections in a row) on a status row whose "
        "task ran on the killed worker."
    )
    return {"table": table.show(), "rows": rows, "kills": [k.__dict__ for k in kills]}


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brokers = list(results)
    fig, axes = plt.subplots(1, len(brokers), figsize=(7 * len(brokers), 5), squeeze=False)
    for ax, broker in zip(axes[0], brokers, strict=True):
        rows = results[broker]["rows"]
        names = list(rows)
        for i, name in enumerate(names):
            values = rows[name]["times_s"]
            seen = [v for v in values if not math.isinf(v)]
            censored = len(values) - len(seen)
            jitter = [i + random.uniform(-0.15, 0.15) for _ in seen]
            ax.scatter(seen, jitter, s=14, alpha=0.7)
            if censored:
                ax.scatter([WINDOW * 1.1], [i], marker=">", s=60, color="grey")
                ax.annotate(f"{censored} > {WINDOW:.0f} s", (WINDOW * 1.15, i + 0.2), fontsize=7)
            if seen:
                med = percentile(values, 50)
                if not math.isinf(med):
                    ax.plot([med, med], [i - 0.3, i + 0.3], color="black", linewidth=1)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(0.1, WINDOW * 3)
        ax.axvline(1.0, color="green", linestyle=":", linewidth=1, label="goal: median < 1 s")
        ax.legend(loc="lower right", fontsize=7)
        ax.set_xlabel("seconds from kill -9 to 'down' (log; bar = median)")
        ax.set_title(f"{broker}: {len(results[broker]['kills'])} kills")
        ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry ----------------------------------------------------------------------------------


def run(env: BenchEnv, quick: bool = False) -> dict[str, Any]:
    kills = 3 if quick else 10
    peers, skipped = death_peers.peers()
    for s in skipped:
        log(f"deaths: peer skipped: {s}")
    dsn = env.database()
    pg_exec(
        dsn,
        "CREATE TABLE deathbench_jobs (id text PRIMARY KEY, status text NOT NULL, "
        "celery_task_id text, updated_at timestamptz NOT NULL)",
    )
    backend = env.redis.url
    names = ["taskmedic", *(p.name for p in peers)]
    per_worker = {"taskmedic", *(p.name for p in peers if p.per_worker)}
    out: dict[str, Any] = {"skipped_peers": skipped}
    results: dict[str, dict[str, Any]] = {}
    redis_kills = run_broker(env, Broker("redis", env.redis.url, backend), dsn, peers, kills)
    results["Redis"] = summarize("Redis", redis_kills, names, per_worker)
    with rabbitmq_vhost() as amqp:
        if amqp is not None:
            broker = Broker("rabbitmq", amqp, backend)
            amqp_kills = run_broker(env, broker, dsn, peers, kills)
            results["RabbitMQ"] = summarize("RabbitMQ", amqp_kills, names, per_worker)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png = RESULTS / f"deaths-{stamp}.png"
    plot(results, png)
    if not quick:
        shutil.copyfile(png, PLOT)
    log(f"deaths: plot in {png.relative_to(ROOT)}" + ("" if quick else f" and {PLOT.name}"))
    out.update(results)
    return out
