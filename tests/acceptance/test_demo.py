"""`make demo` does what it prints: real services, real faults, and nothing left behind.

The demo runs as a real subprocess (`python -m demo`) with its embedded PostgreSQL
and Redis, a real Celery worker and beat, and the exporter; the test scrapes its /metrics,
injects the fault the demo tells users to inject, and stops it the way a user does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.healer.test_console_browser import CHROMIUM, CHROMIUM_ARGS
from tests.services import ROOT, free_port, need_or_skip, wait_for

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

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
    Alertmanager hands it to the healer, and the action waits for a person's approval, given
    in the console in a real browser; Ctrl-C then stops the healer, Prometheus and Alertmanager
    with the rest and leaves no process or folder behind."""
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
    approve_in_the_console(info["healer"], run.dir, action["id"])

    def decided() -> str | None:
        req = urllib.request.Request(  # noqa: S310 - the demo's own healer
            f"{info['healer']}api/actions/{action['id']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            got: dict[str, Any] = json.load(resp)
        return got["approved_by"] if got["state"] != "awaiting_approval" else None

    assert wait_for(decided, timeout=30, interval=0.5, what="the approval recorded") == "demo"

    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=90) == 0, run.output()
    left = [name for name, pid in pids.items() if alive(pid)]
    assert not left, f"still running after Ctrl-C: {left}\n{run.output()}"
    assert not processes_using(run.dir)


def approve_in_the_console(healer_url: str, demo_dir: Path, action_id: int) -> None:
    """What the demo's guide tells a user to do: open the console in a browser, log in as
    `demo` with the password in the demo's folder, open the action, Approve…, Approve and run."""
    need_or_skip(CHROMIUM.exists(), f"Chromium ({CHROMIUM})")
    need_or_skip(sync_playwright is not None, "Playwright for Python")
    password = (demo_dir / "healer-password").read_text().strip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(healer_url)
            page.fill("input[name=username]", "demo")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_selector("#actions")
            page.goto(f"{healer_url}actions/{action_id}")
            page.locator("#state", has_text="awaiting approval").wait_for()
            page.click("#approve-confirm summary")
            page.click("#approve")
            page.locator("#state", has_text="awaiting approval").wait_for(state="detached")
        finally:
            browser.close()


# --- in a terminal, piped through tee: Ctrl-C, SIGHUP, kill -9 then another demo -------------

TMUX = shutil.which("tmux")


@dataclass
class TerminalDemo:
    """A demo run by a user in a terminal: `python -m demo ARGS 2>&1 | tee LOG` in a tmux pane."""

    tmux: list[str]
    session: str
    log: Path
    state: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def state_file(self) -> dict[str, Any]:
        """The running demo's state file (which pids and folder it owns), once it is ready."""
        for path in self.state.glob("*.json"):
            data: dict[str, Any] = json.loads(path.read_text())
            if data.get("ready") and path.stem == str(data["pid"]):
                return data
        return {}

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.session, *keys], check=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Any]:
    """Start demos in panes of a private tmux server; the server is killed at the end."""
    need_or_skip(TMUX is not None, "tmux")
    assert TMUX is not None
    tmux = [TMUX, "-L", f"taskmedic-demo-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    started: list[TerminalDemo] = []

    def start(*args: str) -> TerminalDemo:
        name = f"demo{len(started)}"
        log = tmp_path / f"{name}.log"
        demo = [sys.executable, "-m", "demo", "--listen", f"127.0.0.1:{free_port()}", *args]
        command = (
            f"cd {shlex.quote(str(ROOT))} && TASKMEDIC_DEMO_STATE={shlex.quote(str(state))} "
            f"{shlex.join(demo)} 2>&1 | tee {shlex.quote(str(log))}"
        )
        subprocess.run(
            [*tmux, "new-session", "-d", "-s", name, "-x", "160", "-y", "48", command],
            check=True,
        )
        run = TerminalDemo(tmux, name, log, state)
        started.append(run)
        return run

    yield start
    subprocess.run([*tmux, "kill-server"], capture_output=True)
    # A demo a failed test left running is ended by a last demo's clean-up pass.
    for leftover in state.glob("*.json"):
        data = json.loads(leftover.read_text())
        if alive(data["pid"]):
            os.kill(data["pid"], signal.SIGKILL)
    if any(state.glob("*.json")):
        subprocess.run(
            [sys.executable, "-c", "from demo.leftovers import clean_leftovers; clean_leftovers()"],
            env={**os.environ, "TASKMEDIC_DEMO_STATE": str(state)},
            cwd=ROOT,
            check=False,
        )


def ready_state(run: TerminalDemo) -> dict[str, Any]:
    data: dict[str, Any] = wait_for(
        run.state_file, timeout=150, interval=0.2, what=f"{run.session} ready"
    )
    wait_for(lambda: "taskmedic-demo ready" in run.text(), timeout=10, what="the ready line")
    return data


def owned_pids(data: dict[str, Any]) -> list[int]:
    """The demo itself and every process its state file records."""
    return [int(data["pid"]), *(int(pid) for pid, _ in data["processes"].values())]


def assert_nothing_left(data: dict[str, Any], run: TerminalDemo) -> None:
    """Within a deadline: no process of the demo, its folders gone, its state file gone."""
    folders = [Path(data["dir"]), *(Path(d) for d in data["dirs"])]

    def gone() -> bool:
        return (
            not any(alive(pid) for pid in owned_pids(data))
            and not any(f.exists() for f in folders)
            and not any(processes_using(f) for f in folders)
            and not (run.state / f"{data['pid']}.json").exists()
        )

    try:
        wait_for(gone, timeout=30, interval=0.2, what="the demo and all it started gone")
    except AssertionError:
        left = [p for p in owned_pids(data) if alive(p)]
        using = [u for f in folders for u in processes_using(f)]
        raise AssertionError(
            f"left behind: pids {left}, processes {using}, "
            f"folders {[str(f) for f in folders if f.exists()]}\n{run.text()}"
        ) from None


@pytest.mark.timeout(240)
def test_ctrl_c_on_a_demo_piped_through_tee_stops_everything_although_tee_dies_first(
    tmp_path: Path, terminal: Any
) -> None:
    """`python -m demo --healer 2>&1 | tee log` and Ctrl-C: the terminal's SIGINT reaches tee
    too, so every later message of the demo hits a closed pipe; the demo still stops its
    worker, beat, exporter, healer, Redis and PostgreSQL and removes its folder."""
    run = terminal("--healer", "--healer-listen", f"127.0.0.1:{free_port()}")
    data = ready_state(run)
    assert {"postgres", "redis"} <= set(data["processes"])
    assert any(name.startswith("healer-") for name in data["processes"])
    run.keys("C-c")
    assert_nothing_left(data, run)


@pytest.mark.timeout(240)
def test_closing_the_demos_terminal_stops_everything(tmp_path: Path, terminal: Any) -> None:
    """A fault typed in the demo's terminal (`3`, stop-beat) suspends beat; then the terminal
    closes (SIGHUP to the demo and tee): nothing keeps running, suspended beat included, and
    nothing is left on disk."""
    run = terminal()
    data = ready_state(run)
    beat = next(int(pid) for name, (pid, _) in data["processes"].items() if name.startswith("beat"))
    run.keys("3", "Enter")
    wait_for(lambda: "suspended celery beat" in run.text(), timeout=20, what="the fault's reply")
    wait_for(lambda: "is suspended" in run.text(), timeout=20, what="the demo noticing")
    with open(f"/proc/{beat}/stat", encoding="ascii") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"), "beat is not suspended"
    subprocess.run([*run.tmux, "kill-session", "-t", run.session], check=True)
    assert_nothing_left(data, run)


@pytest.mark.timeout(300)
def test_a_second_demo_cleans_up_what_a_killed_demo_left_behind(
    tmp_path: Path, terminal: Any
) -> None:
    """`kill -9` of the demo leaves its PostgreSQL and Redis (daemons) and its folder; the next
    demo stops those processes and removes the folder before it starts, then stops clean."""
    first = terminal()
    data = ready_state(first)
    os.kill(int(data["pid"]), signal.SIGKILL)
    wait_for(lambda: not alive(int(data["pid"])), timeout=10, what="the demo killed")
    postgres, redis = (int(data["processes"][n][0]) for n in ("postgres", "redis"))
    assert alive(postgres)
    assert alive(redis)
    assert Path(data["dir"]).exists()

    second = terminal()
    wait_for(
        lambda: "cleaned up after an earlier demo" in second.text(),
        timeout=60,
        what="the second demo's clean-up",
    )
    assert_nothing_left(data, first)
    again = ready_state(second)
    assert again["pid"] != data["pid"]
    second.keys("C-c")
    assert_nothing_left(again, second)


def healer_actions(info: dict[str, str], token: str, rule: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(  # noqa: S310 - the demo's own healer
        f"{info['healer']}api/actions?rule={rule}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        items: list[dict[str, Any]] = json.load(resp)["items"]
    return items


@pytest.mark.timeout(300)
def test_a_fault_command_is_healed_by_an_alert_the_demo_fires_itself_each_time(
    tmp_path: Path, demos: list[DemoRun]
) -> None:
    """Without Prometheus: `python -m demo fault kill-worker` kills the worker and says what
    comes next; the demo fires TaskmedicCeleryWorkerDown at the healer, whose rule starts the
    worker again. A second kill is a new alert (fresh startsAt), so it is healed again."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {"TASKMEDIC_DEMO_STATE": str(state)}
    run = start_demo(
        tmp_path,
        "--healer",
        "--without-prometheus",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--healer-listen",
        f"127.0.0.1:{free_port()}",
        "--run-for",
        "280",
        env=env,
    )
    demos.append(run)
    info = wait_for(run.ready, timeout=150, interval=0.2, what="the demo's ready line")
    token = (run.dir / "healer-token").read_text().strip()
    worker = info["worker"]

    def worker_up() -> float | None:
        return value(
            scrape(info["metrics"]), "taskmedic_celery_worker_up", cluster="demo", worker=worker
        )

    def restarts() -> list[dict[str, Any]]:
        items = healer_actions(info, token, "demo-restart-worker")
        return [i for i in items if i["state"] == "succeeded"]

    wait_for(lambda: worker_up() == 1, timeout=30, interval=0.5, what="the worker seen alive")
    for round_ in (1, 2):
        out = subprocess.run(
            [sys.executable, "-m", "demo", "fault", "kill-worker", "--dir", str(run.dir)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "killed the Celery worker" in out.stdout
        assert "restarts the worker" in out.stdout  # what the healer will do next
        wait_for(
            lambda: len(restarts()) >= round_,  # noqa: B023 - called before round_ changes
            timeout=90,
            interval=1,
            what=f"restart {round_} of the worker by the healer",
        )
        wait_for(lambda: worker_up() == 1, timeout=30, interval=0.5, what="the worker back")
    assert run.said("fired TaskmedicCeleryWorkerDown")
    alerts = [a["alert"]["starts_at"] for a in restarts()]
    assert len(set(alerts)) == 2, alerts

    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=60) == 0, run.output()
    assert not processes_using(run.dir)
    assert not list(state.glob("*.json"))
