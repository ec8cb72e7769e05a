"""What the fault scenarios (tests/faults/) share: their counts, a healer process that can be
killed and started again on the same address, and a sender that retries as Alertmanager does.

`TASKMEDIC_FAULTS=full` (what `make faults` sets) runs the full counts; without it the same
scenarios run with small counts, as part of `make test`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services import free_port, start_healer_process
from tests.support.exporter_helpers import parse_metrics, value
from tests.support.ingest_helpers import AUTH

FULL = os.environ.get("TASKMEDIC_FAULTS", "") == "full"


@dataclass(frozen=True)
class Counts:
    kill_rounds: int
    fuzz_requests: int
    load_alerts: int
    load_seconds: float
    load_repeats: int
    outage_seconds: float
    race_tasks: int
    replica_kills: int


COUNTS = (
    Counts(
        kill_rounds=200,
        fuzz_requests=10_000,
        load_alerts=10_000,
        load_seconds=60.0,
        load_repeats=3,
        outage_seconds=30.0,
        race_tasks=1_000,
        replica_kills=30,
    )
    if FULL
    else Counts(
        kill_rounds=4,
        fuzz_requests=1_000,
        load_alerts=600,
        load_seconds=4.0,
        load_repeats=2,
        outage_seconds=3.0,
        race_tasks=100,
        replica_kills=3,
    )
)


def report(scenario: str, **figures: Any) -> None:
    """Print a scenario's counts on one line (`make faults` shows them; -s)."""
    shown = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\nfaults: {scenario}: {shown}", flush=True)


@dataclass
class RestartableHealer:
    """A `taskmedic healer` process that keeps its port across `kill()` and `start()`."""

    config: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc, _ = start_healer_process(self.config, self.log, timeout=60, port=self.port)
        self.starts += 1

    def kill(self) -> None:
        """`kill -9` of the healer process (its scripts run on in their own sessions, as
        they would when systemd kills only the main process)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def rss_kib(self) -> int:
        """The process's peak resident set (VmHWM) in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/PID/status")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def post(url: str, body: bytes, timeout: float = 10.0) -> int:
    """POST a webhook body; the status, or 0 when no answer came (refused, reset, timed out)."""
    req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        url + "/alerts",
        data=body,
        method="POST",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except (OSError, ValueError):  # refused, reset mid-answer, timed out, bad status line
        return 0


@dataclass
class Sender:
    """Delivers notifications as Alertmanager does: a notification that gets no 2xx is sent
    again (after 100 ms here) until it does or `give_up` seconds pass. `acked` holds the
    fingerprints of every notification the healer answered 200; `statuses` counts answers."""

    url: str
    give_up: float = 120.0
    acked: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver_later(self, notification: dict[str, Any], delay: float) -> threading.Thread:
        """`deliver` in a thread of its own, after `delay` seconds; the thread is returned."""

        def run() -> None:
            time.sleep(delay)
            self.deliver(notification)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def deliver(self, notification: dict[str, Any]) -> None:
        body = json.dumps(notification).encode()
        fingerprints = [a["fingerprint"] for a in notification["alerts"]]
        deadline = time.monotonic() + self.give_up
        while True:
            status = post(self.url, body)
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.acked.update(fingerprints)
                    return
            if status not in (0, 503):
                with self._lock:
                    self.failed.append(f"{fingerprints}: HTTP {status}")
                return
            if time.monotonic() > deadline:
                with self._lock:
                    self.failed.append(f"{fingerprints}: no 200 within {self.give_up}s")
                return
            time.sleep(0.1)


class Scraper:
    """Scrapes /metrics 5 times a second in a thread; keeps (check_up, lost, finished) of the
    check `timelines`, and how long each of its collections took."""

    EVERY = 0.2

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.seen: list[tuple[float | None, float | None, float | None]] = []
        self.durations: list[float] = []  # taskmedic_check_duration_seconds, every scrape
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.EVERY):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310
                    m = parse_metrics(resp.read().decode())
            except OSError:
                continue
            took = value(m, "taskmedic_check_duration_seconds", check="timelines")
            if took is not None:
                self.durations.append(took)
            self.seen.append(
                (
                    value(m, "taskmedic_check_up", check="timelines"),
                    value(m, "taskmedic_orphan_tasks", check="timelines", reason="lost"),
                    value(m, "taskmedic_orphan_tasks", check="timelines", reason="finished"),
                )
            )

    def last(self) -> tuple[float | None, float | None, float | None] | None:
        return self.seen[-1] if self.seen else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
