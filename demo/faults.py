"""The faults a demo user injects: `python -m demo fault NAME` from another terminal, or a
fault's number or name typed in the demo's own terminal.

A command finds the running demo through its state file (demo.leftovers) and drops a request
into the demo's `control/` folder; the demo, which owns its processes, injects the fault in its
own loop and writes back what will happen next and when, which the command prints.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from demo import configs, sample
from demo.leftovers import live_demos
from exporter.base.errors import TaskmedicError

if TYPE_CHECKING:
    from demo.main import Demo

__all__ = ["FAULTS", "FaultError", "KeyReader", "inject", "pending", "request"]

FAULTS = {
    "kill-worker": "kill -9 the Celery worker in the middle of an import",
    "restart-worker": "start the Celery worker again (after kill-worker)",
    "stop-beat": "suspend celery beat (kill -STOP): the status cache stops being refreshed",
    "resume-beat": "resume celery beat (kill -CONT)",
    "half-write": "write a task record without its action, as ibex's half-done write did",
}
REPLY_WAIT = 30.0


class FaultError(TaskmedicError):
    """No demo to talk to, several of them, or no answer: the message says which."""


def control_dir(demo_dir: Path) -> Path:
    return demo_dir / "control"


def request(name: str, demo_dir: str | None = None, timeout: float = REPLY_WAIT) -> str:
    """Ask the running demo (the one in `demo_dir` when several run) to inject `name`."""
    if name not in FAULTS:
        raise FaultError(f"no fault {name!r}; one of: {', '.join(FAULTS)}")
    demos = live_demos()
    if demo_dir is not None:
        wanted = os.path.realpath(demo_dir)
        demos = [d for d in demos if os.path.realpath(d["dir"]) == wanted]
    if not demos:
        raise FaultError("no demo is running" + (f" in {demo_dir}" if demo_dir else ""))
    if len(demos) > 1:
        dirs = ", ".join(d["dir"] for d in demos)
        raise FaultError(f"{len(demos)} demos are running ({dirs}): name one with --dir")
    control = control_dir(Path(demos[0]["dir"]))
    control.mkdir(parents=True, exist_ok=True)
    ticket = control / f"{uuid.uuid4().hex}"
    tmp = ticket.with_suffix(".tmp")
    tmp.write_text(name, encoding="utf-8")
    tmp.replace(ticket.with_suffix(".request"))
    reply = ticket.with_suffix(".reply")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reply.exists():
            text = reply.read_text(encoding="utf-8")
            reply.unlink(missing_ok=True)
            return text
        time.sleep(0.1)
    ticket.with_suffix(".request").unlink(missing_ok=True)
    raise FaultError(f"the demo (pid {demos[0]['pid']}) did not answer within {timeout:g}s")


def pending(demo_dir: Path) -> list[tuple[Path, str]]:
    """Requests waiting in the demo's control folder: (where to reply, fault name)."""
    found = []
    for path in sorted(control_dir(demo_dir).glob("*.request")):
        try:
            name = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        path.unlink(missing_ok=True)
        found.append((path.with_suffix(".reply"), name))
    return found


def answer(reply: Path, text: str) -> None:
    tmp = reply.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(reply)


def inject(demo: Demo, name: str) -> str:
    """Inject fault `name` in the running demo; returns what happens next and how long it takes."""
    worker, beat = demo.worker, demo.beat
    assert worker is not None
    assert beat is not None
    healer = demo.healer_files is not None
    lost = (
        f"the timelines it was importing stay 'processing' and count as orphans"
        f' (taskmedic_orphan_tasks{{reason="lost"}}) after their {configs.TIMELINE_GRACE:g} s'
        " grace and two collections (~20 s)"
    )
    if name == "kill-worker":
        if not worker.alive():
            return "the worker is not running; `restart-worker` starts it again"
        os.kill(worker.pid, signal.SIGKILL)
        text = (
            f"killed the Celery worker (pid {worker.pid}) with SIGKILL.\n"
            "  within ~1 s: taskmedic_celery_worker_up 0 (the broker sees its connection "
            f"close); {lost};\n"
            f"  beat's cache refresh has no worker to run it, so tree_status_cache goes stale "
            f"after {configs.MAX_AGE:g} s."
        )
        if healer:
            return text + (
                "\n  healer: TaskmedicCeleryWorkerDown (~10 s) restarts the worker first, so "
                "the stale-cache refresh (~35 s) finds a worker;\n  TaskmedicOrphanTasks (~25 s)"
                " marks the lost timelines as failed."
            )
        return text + "\n  `restart-worker` brings it back."
    if name == "restart-worker":
        if worker.alive():
            return f"the worker (pid {worker.pid}) is already running"
        child = demo.restart_worker()
        return (
            f"started the Celery worker again (pid {child.pid}); taskmedic_celery_worker_up "
            "is 1 again within ~5 s, and the cache refreshes beat queued meanwhile run at once."
        )
    if name == "stop-beat":
        if beat.stopped():
            return f"beat (pid {beat.pid}) is already suspended; `resume-beat` resumes it"
        os.kill(beat.pid, signal.SIGSTOP)
        text = (
            f"suspended celery beat (pid {beat.pid}) with SIGSTOP.\n"
            f"  after max_age ({configs.MAX_AGE:g} s): taskmedic_stale_rows"
            f'{{check="tree_status_cache"}} {sample.AGENTS}; no new timeline uploads.'
        )
        if healer:
            return text + (
                "\n  healer: TaskmedicStaleRows (~35 s) sends demo.update_tree_status_cache to "
                "the worker; the rows are fresh again a few seconds later (beat stays suspended)."
            )
        return text + "\n  `resume-beat` resumes it."
    if name == "resume-beat":
        os.kill(beat.pid, signal.SIGCONT)
        return (
            f"resumed celery beat (pid {beat.pid}); the cache is refreshed within "
            "5 s and taskmedic_stale_rows drops to 0 at the next collection."
        )
    if name == "half-write":
        record = sample.add_record(demo.dsn, "half-written-by-hand", with_action=False)
        text = (
            f"wrote task_record {record} without its task_action.\n"
            f"  after its grace ({configs.RECORD_GRACE:g} s): taskmedic_orphan_rows"
            '{check="records_without_action"} one higher.'
        )
        if healer:
            return text + (
                "\n  healer: TaskmedicOrphanRows (already firing for the seeded record, else"
                " ~15 s) plans the missing cancel action, which waits for your approval in the"
                " console and then covers every row the check confirms at that moment."
            )
        return text
    return f"no fault {name!r}; one of: {', '.join(FAULTS)}"


class KeyReader:
    """Faults typed in the demo's terminal: a fault's number or name, then Enter.

    Reads the descriptor, not `sys.stdin`, so the thread holds no lock the interpreter wants
    at exit; started only when the demo is the terminal's foreground job (a background read
    would stop the demo with SIGTTIN).
    """

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()

    @classmethod
    def start(cls) -> KeyReader | None:
        try:
            if not sys.stdin.isatty() or os.tcgetpgrp(sys.stdin.fileno()) != os.getpgrp():
                return None
        except (OSError, ValueError):
            return None
        reader = cls()
        threading.Thread(target=reader._read, name="demo-keys", daemon=True).start()
        return reader

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(sys.stdin.fileno(), 1024):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.lines.put(line.decode(errors="replace").strip())

    def poll(self) -> list[str]:
        """Fault names typed since the last call (numbers turned into names)."""
        names = []
        while not self.lines.empty():
            typed = self.lines.get_nowait()
            if typed.isdigit() and 1 <= int(typed) <= len(FAULTS):
                typed = list(FAULTS)[int(typed) - 1]
            if typed:
                names.append(typed)
        return names


def menu() -> str:
    """The faults as the guide lists them, numbered for the terminal."""
    return "\n".join(
        f"  {i}. {name:<15} {what}" for i, (name, what) in enumerate(FAULTS.items(), start=1)
    )
