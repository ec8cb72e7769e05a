"""Child processes of the demo, each in its own process group, stopped for certain.

Own process groups keep Ctrl-C in the terminal from reaching Celery before the demo decides
the order of shutdown, and let the demo end each child with everything it started. On Linux
each child also gets SIGKILL from the kernel when the demo dies without stopping it (`kill -9`
of the demo); what outlives that is for the next demo to clean (demo.leftovers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    """A long-running subprocess with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    # Seconds between the stop signal and SIGKILL, when shorter than stop_all's deadline.
    stop_wait: float | None = None
    reported: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stopped(self) -> bool:
        """True while the process is suspended (`kill -STOP`)."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except OSError:
            return False

    def exit_description(self) -> str:
        code = self.proc.returncode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def request_stop(self) -> None:
        """Ask the child to stop; SIGCONT too, so a child stopped with `kill -STOP` hears it."""
        if self.alive():
            self.signal_group(self.stop_signal)
            self.signal_group(signal.SIGCONT)

    def finish_stop(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic), then SIGKILL the whole group."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Even after the leader is gone, anything left in its group goes too.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# A stopped demo does not wait for work in flight: each child gets this long after its stop
# signal, then SIGKILL (the Celery worker would otherwise finish its 20 s import first).
STOP_DEADLINE = 2.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the demo's thread that started us is gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    name: str,
    argv: Sequence[str],
    logdir: Path,
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_wait: float | None = None,
) -> Child:
    """Start `argv` in a new session (its own process group), output to `logdir/NAME.log`."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return Child(name, proc, log, stop_signal, stop_wait)


def stop_all(children: Sequence[Child], timeout: float = STOP_DEADLINE) -> None:
    """Ask every child to stop at once, then wait for each and kill what is left."""
    for child in children:
        child.request_stop()
    now = time.monotonic()
    for child in children:
        child.finish_stop(now + min(timeout, child.stop_wait or timeout))
