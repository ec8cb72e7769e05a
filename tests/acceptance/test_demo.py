"""`make demo` does what it prints: real services, real faults, and nothing left behind.

The demo runs as a real subprocess (`python -m demo`) with its embedded PostgreSQL
and Redis, a real Celery worker and beat, and the exporter; the test scrapes its /metrics,
injects the fault the demo tells users to inject, and stops it the way a user does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services import ROOT, free_port, need_or_skip, wait_for

READY = re.compile(r"^taskmedic-demo ready (.*)$")
PIDS = ("worker_pid", "beat_pid", "exporter_pid", "postgres_pid", "redis_pid")
CHECKS = ("tree_status_cache", "timelines", "records_without_action")


@dataclass
class DemoRun:
    proc: subprocess.Popen[str]
    dir: Path
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    def close(self) -> None:
        """After the demo stopped: let the reader reach the end of its output, then close the
        pipe (an open pipe left to the garbage collector is a leak the tests refuse)."""
        if self.pump is not None:
            self.pump.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def output(self) -> str:
        return "\n".join(self.lines)

    def ready(self) -> dict[str, str]:
        """The fields of the ready line once printed (empty before); fails if the demo died."""
        for line in self.lines:
            m = READY.match(line)
            if m:
                return dict(kv.split("=", 1) for kv in m.group(1).split())
        if self.proc.poll() is not None:
            raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.output()}")
        return {}

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def start_demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> DemoRun:
    demo_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--dir", str(demo_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
    )
    run = DemoRun(proc, demo_dir)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append(line.rstrip("\n"))

    run.pump = threading.Thread(target=pump, daemon=True)
    run.pump.start()
    return run


@pytest.fixture
def demos() -> Iterator[list[DemoRun]]:
    """Demos started by a test; any still running at the end get SIGINT, then SIGKILL."""
    started: list[DemoRun] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            os.kill(run.proc.pid, signal.SIGINT)
            try:
                run.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
        run.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - the demo's own URL
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_using(path: Path) -> list[str]:
    """Live processes whose working directory or command line is inside `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(path)) or str(path) in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


@pytest.mark.timeout(300)
def test_demo_shows_healthy_checks_then_a_killed_worker_and_its_orphan_and_stops_clean(
    tmp_path: Path, demos: list[DemoRun]
) -> None:
    """The demo's checks are up; `kill -9` of its worker shows worker_up 0 and a lost
    timeline; Ctrl-C (SIGINT) ends the demo with every process it started gone."""
    # Imports of 10 minutes: the worker is certainly mid-job when the test kills it.
    run = start_demo(
        tmp_path,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--run-for",
        "280",
        env={"TASKMEDIC_DEMO_TIMELINE_SECONDS": "600"},
    )
    demos.append(run)
    info = wait_for(run.ready, timeout=120, interval=0.2, what="the demo's ready line")
    pids = {k: int(info[k]) for k in PIDS}
    assert all(alive(p) for p in pids.values()), pids
    metrics = info["metrics"]
    worker = info["worker"]

    def all_checks_up() -> bool:
        s = scrape(metrics)
        return all(value(s, "taskmedic_check_up", check=c) == 1 for c in CHECKS)

    wait_for(all_checks_up, timeout=60, interval=0.5, what="all three demo checks up")
    wait_for(
        lambda: (
            value(scrape(metrics), "taskmedic_celery_worker_up", cluster="demo", worker=worker) == 1
        ),
        timeout=30,
        interval=0.5,
        what="the demo's worker seen alive",
    )
    # Two imports are running on a live worker: not orphans.
    wait_for(
        lambda: (
            value(scrape(metrics), "taskmedic_orphan_tasks", check="timelines", reason="lost") == 0
        ),
        timeout=30,
        interval=0.5,
        what="the running imports counted as no orphans",
    )
    assert value(scrape(metrics), "taskmedic_stale_rows", check="tree_status_cache") == 0

    os.kill(pids["worker_pid"], signal.SIGKILL)
    wait_for(
        lambda: (
            value(scrape(metrics), "taskmedic_celery_worker_up", cluster="demo", worker=worker) == 0
        ),
        timeout=20,
        interval=0.25,
        what="worker_up 0 after kill -9 of the demo's worker",
    )
    wait_for(lambda: run.said("killed by SIGKILL"), timeout=10, what="the demo noticing")
    # The imports the worker was running stay 'processing': orphans after grace (15 s).
    wait_for(
        lambda: (
            (
                value(scrape(metrics), "taskmedic_orphan_tasks", check="timelines", reason="lost")
                or 0
            )
            >= 2
        ),
        timeout=90,
        interval=0.5,
        what="the killed worker's timelines counted as lost",
    )
    # The record written without its action (seeded by the demo) is found as well.
    assert value(scrape(metrics), "taskmedic_orphan_rows", check="records_without_action") == 1

    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=90) == 0, run.output()
    wait_for(lambda: run.said("nothing left running"), timeout=5, what="the goodbye line")
    left = [name for name, pid in pids.items() if alive(pid)]
    assert not left, f"still running after Ctrl-C: {left}\n{run.output()}"
    assert not processes_using(run.dir)


@pytest.mark.timeout(180)
def test_sigterm_while_the_demo_starts_leaves_nothing_running(
    tmp_path: Path, demos: list[DemoRun]
) -> None:
    """Stopping the demo half-way through its start (PostgreSQL and Redis up, Celery
    starting) still stops everything it had started."""
    run = start_demo(tmp_path, "--listen", f"127.0.0.1:{free_port()}")
    demos.append(run)
    wait_for(
        lambda: run.said("starting the Celery worker") or run.proc.poll() is not None,
        timeout=90,
        what="the demo to start Celery",
    )
    assert run.proc.poll() is None, run.output()
    started = processes_using(run.dir)
    assert started, "PostgreSQL and Redis should be running by now"
    # Let the worker and beat processes exist too: the harder case.
    wait_for(lambda: (run.dir / "logs" / "beat.log").exists(), timeout=30, what="beat spawned")
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.proc.wait(timeout=90) == 0, run.output()
    assert run.said("nothing left running")
    assert not processes_using(run.dir), run.output()


@pytest.mark.prometheus
def test_demo_prometheus_and_alertmanager_configs_pass_their_own_checks(tmp_path: Path) -> None:
    """What `--healer` hands to Prometheus and Alertmanager is valid for the real tools."""
    from demo import healing

    need_or_skip(Path("/usr/bin/promtool").exists(), "promtool")
    need_or_skip(Path("/usr/bin/amtool").exists(), "amtool")
    files = healing.write_healer_files(tmp_path, "127.0.0.1:9809")
    prom = healing.write_prometheus(tmp_path, "127.0.0.1:9808", files.listen, "127.0.0.1:9093")
    am = healing.write_alertmanager(tmp_path, files)
    out = subprocess.run(
        ["/usr/bin/promtool", "check", "config", str(prom)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rules found" in out.stdout, out.stdout
    out = subprocess.run(
        ["/usr/bin/amtool", "check-config", str(am)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.prometheus
@pytest.mark.timeout(240)
def test_demo_with_healer_routes_its_orphan_record_to_an_approval_and_stops_clean(
    tmp_path: Path, demos: list[DemoRun]
) -> None:
    """`--healer`: the seeded orphan record fires TaskmedicOrphanRows in the real Prometheus,
    Alertmanager hands it to the healer, and the action waits for a person's approval; Ctrl-C
    then stops the healer, Prometheus and Alertmanager with the rest."""
    need_or_skip(Path("/usr/bin/prometheus").exists(), "prometheus")
    need_or_skip(Path("/usr/bin/prometheus-alertmanager").exists(), "prometheus-alertmanager")
    run = start_demo(
        tmp_path,
        "--healer",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--healer-listen",
        f"127.0.0.1:{free_port()}",
        "--run-for",
        "220",
    )
    demos.append(run)
    info = wait_for(run.ready, timeout=150, interval=0.2, what="the demo's ready line")
    pids = {k: int(v) for k, v in info.items() if k.endswith("_pid")}
    assert {"healer_pid", "prometheus_pid", "alertmanager_pid"} <= set(pids)
    token = (run.dir / "healer-token").read_text().strip()

    def awaiting_approval() -> list[dict[str, Any]]:
        req = urllib.request.Request(  # noqa: S310 - the demo's own healer
            f"{info['healer']}api/actions?rule=demo-cancel-records-without-action",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            items: list[dict[str, Any]] = json.load(resp)["items"]
        return [i for i in items if i["state"] == "awaiting_approval"]

    (action,) = wait_for(awaiting_approval, timeout=90, interval=1, what="an action to approve")
    assert action["alert"]["labels"]["check"] == "records_without_action"

    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=90) == 0, run.output()
    left = [name for name, pid in pids.items() if alive(pid)]
    assert not left, f"still running after Ctrl-C: {left}\n{run.output()}"
    assert not processes_using(run.dir)
