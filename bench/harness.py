"""What every benchmark needs: processes it starts and always stops, RSS sampling, HTTP loops
with bounded count and time, percentiles and markdown tables.

Benchmarks compare taskmedic with peers run in the same run (ratios), never with fixed numbers
from another machine; nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.services import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    """Progress on stderr, so stdout stays the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- numbers and tables ---------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds, and the sample count."""
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": (max(seconds) * 1000) if seconds else float("nan"),
    }


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Table:
    """A markdown table: printed when the benchmark ends and pasted into bench/README.md."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def markdown(self) -> str:
        lines = [f"#### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def show(self) -> str:
        text = self.markdown()
        print(text, flush=True)
        return text


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A real subprocess in its own process group, logged to a file, always stopped."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                cwd=str(cwd),
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def rss(self) -> int:
        """Resident memory of the process itself (not its children), in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # Whatever the group still holds (step children, a stuck server) goes with SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until truthy; fail naming `what` at the deadline (the tests' helper)."""
    return wait_for(predicate, timeout, interval, what)


def http_ok(url: str, headers: dict[str, str] | None = None, proc: Proc | None = None) -> bool:
    """One GET; True on 200. Raises when `proc` died, so a crash names itself."""
    import urllib.error
    import urllib.request

    if proc is not None and not proc.alive():
        raise RuntimeError(f"{proc.argv[0]} exited early:\n{proc.output()}")
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - 127.0.0.1 only
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def serve_on_free_port(
    start: Callable[[int], Proc], ready_path: str, what: str, timeout: float = 60.0
) -> tuple[Proc, int]:
    """Start a server on a free port and wait until `ready_path` answers 200.

    A port found free can be taken as an ephemeral port by another connection before the
    server binds it: a server that exits with "address already in use" is started again on
    another port (three tries).
    """
    for attempt in range(3):
        port = free_port()
        proc = start(port)
        url = f"http://127.0.0.1:{port}{ready_path}"
        try:
            wait_until(functools.partial(http_ok, url, proc=proc), timeout, what)
        except RuntimeError:
            proc.stop()
            if attempt < 2 and "in use" in proc.output():
                log(f"{what}: port {port} was taken meanwhile; trying another")
                continue
            raise
        else:
            return proc, port
    raise AssertionError("unreachable")


def http_get(url: str, headers: dict[str, str] | None = None) -> str:
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - 127.0.0.1 only
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return str(resp.read().decode())


def cpu_seconds(*pids: int) -> float:
    """User plus system CPU seconds of the processes `pids` so far (not their children); a
    process that has exited counts nothing, so a set of PostgreSQL backends can be summed."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


# --- memory ---------------------------------------------------------------------------------


class RssSampler:
    """Samples a process's RSS in a thread; `phase()` labels what comes next."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, str, int]] = []
        self._phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self._phase, proc.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def phase(self, name: str) -> None:
        self._phase = name

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def by_phase(self) -> dict[str, dict[str, float]]:
        """Per phase: min/max/last RSS in MiB and the sample count."""
        out: dict[str, dict[str, float]] = {}
        for name in dict.fromkeys(p for _, p, _ in self.samples):
            values = [r for _, p, r in self.samples if p == name]
            out[name] = {
                "n": len(values),
                "min_mib": min(values) / 2**20,
                "max_mib": max(values) / 2**20,
                "last_mib": values[-1] / 2**20,
            }
        return out


def mib(n: float) -> float:
    return n / 2**20


# --- HTTP load ------------------------------------------------------------------------------


async def timed_gets(
    url: str,
    *,
    count: int,
    max_seconds: float,
    concurrency: int = 1,
    headers: dict[str, str] | None = None,
) -> list[float]:
    """GET `url` up to `count` times (or until `max_seconds`), each timed to the full body.

    One keep-alive connection per concurrent client, as Prometheus keeps its connection.
    """
    latencies: list[float] = []
    deadline = time.monotonic() + max_seconds
    remaining = count
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET {url} answered {resp.status}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


@dataclass
class PostRun:
    """The outcome of a POST load: completed requests, statuses and timings."""

    sent: int
    elapsed: float
    statuses: dict[int, int]
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else float("nan")


async def post_bodies(
    url: str,
    bodies: Iterable[bytes],
    *,
    concurrency: int,
    max_seconds: float,
    headers: dict[str, str] | None = None,
    on_progress: Callable[[int], Awaitable[None] | None] | None = None,
) -> PostRun:
    """POST each body once from `concurrency` keep-alive clients; stops at `max_seconds`."""
    it = iter(bodies)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    sent = 0
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    t_start = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    async with aiohttp.ClientSession(connector=connector, headers=hdrs) as session:

        async def client() -> None:
            nonlocal sent
            for body in it:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                latencies.append(time.perf_counter() - t0)
                sent += 1
                if on_progress is not None:
                    r = on_progress(sent)
                    if r is not None:
                        await r

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return PostRun(sent, time.perf_counter() - t_start, statuses, latencies)


# --- cleanup --------------------------------------------------------------------------------


@contextlib.contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


# --- wrk (optional) -------------------------------------------------------------------------


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(
    url: str,
    *,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None,
    script: list[str] | None = None,
) -> str | None:
    """wrk's report of one run (one thread, latency percentiles), or None without wrk.

    `script`: a Lua script and its arguments (`[path, arg, ...]`).
    """
    import shutil

    exe = shutil.which("wrk")
    if exe is None:
        return None
    argv = [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", script[0]]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    if script and len(script) > 1:
        argv += ["--", *script[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr[-500:]}")
    return proc.stdout


def _wrk_percentiles(report: str, pcts: Sequence[str]) -> dict[str, float]:
    import re

    out: dict[str, float] = {}
    for pct in pcts:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", report, re.MULTILINE)
        if m:
            out[f"p{pct}_ms"] = float(m.group(1)) * _WRK_UNITS[m.group(2)]
    return out


def wrk_latency(
    url: str, *, seconds: int = 5, connections: int = 1, headers: dict[str, str] | None = None
) -> dict[str, float] | None:
    """p50/p90/p99 of `wrk --latency` (one thread) against `url`, or None without wrk.

    wrk is optional (`apt-get install wrk`): a C client whose own overhead is negligible, next
    to the Python client every benchmark uses.
    """
    import re

    report = _wrk(url, seconds=seconds, connections=connections, headers=headers)
    if report is None:
        return None
    out = _wrk_percentiles(report, ("50", "90", "99"))
    m = re.search(r"(\d+) requests in", report)
    out["n"] = float(m.group(1)) if m else float("nan")
    return out


def wrk_storm(
    url: str,
    template: Path,
    *,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None = None,
) -> dict[str, float] | None:
    """POST distinct notifications from `template` (see bench/storm.lua) with wrk for
    `seconds`; rate, non-2xx count and latency percentiles, or None without wrk.

    A C client costs the 2 cores a fraction of what the Python client does, so more of them
    are left to the server and its journal.
    """
    import re

    report = _wrk(
        url,
        seconds=seconds,
        connections=connections,
        headers={"Content-Type": "application/json", **(headers or {})},
        script=[str(ROOT / "bench" / "storm.lua"), str(template)],
    )
    if report is None:
        return None
    out = _wrk_percentiles(report, ("50", "99"))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", report)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{report[-1000:]}")
    out["sent"] = float(m.group(1))
    out["elapsed_s"] = float(m.group(2)) * _WRK_UNITS[m.group(3)] / 1000
    out["rate"] = out["sent"] / out["elapsed_s"]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    out["non_2xx"] = float(bad.group(1)) if bad else 0.0
    return out
