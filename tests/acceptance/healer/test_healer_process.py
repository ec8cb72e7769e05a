"""Real `taskmedic healer` processes: two replicas on one journal, SIGTERM, labels never run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.services import ROOT, start_healer_process, wait_for
from tests.support.ingest_helpers import (
    AUTH,
    payload,
    rows,
    with_alert,
    write_config,
)
from tests.support.log_helpers import HealerProcess


class Healer(HealerProcess):
    """A healer process this module also talks to over its JSON API."""

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            self.url + path,
            data=data,
            method=method,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def start_healer(tmp_path: Path) -> Iterator[Callable[[Path], Healer]]:
    """Start `taskmedic healer --config F` processes; all are stopped after the test."""
    started: list[Healer] = []

    def start(config: Path) -> Healer:
        log = tmp_path / f"healer-{len(started)}.log"
        proc, port = start_healer_process(config, log, timeout=30)
        healer = Healer(proc, port, log)
        started.append(healer)
        return healer

    yield start
    for h in started:
        if h.proc.poll() is None:
            os.killpg(h.proc.pid, signal.SIGKILL)
            h.proc.wait(timeout=10)


APPEND = """\
rules:
  - name: refresh-tree-status
    match: {{alertname: TaskmedicStaleRows}}
    steps:
      - name: append
        script:
          argv: ["{python}", -c, "import sys; open(sys.argv[1], 'a').write('ran\\\\n')", "{out}"]
"""


def test_two_healer_processes_on_one_journal_start_one_action(
    journal_dsn: str, tmp_path: Path, start_healer: Callable[[Path], Healer]
) -> None:
    """Both replicas of an HA Alertmanager pair deliver the same alert, repeatedly, to both."""
    out = tmp_path / "ran.txt"
    config = write_config(
        tmp_path, journal_dsn, rules=APPEND.format(python=sys.executable, out=out)
    )
    a, b = start_healer(config), start_healer(config)
    body = payload("firing_stale_rows")
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda h: h.request("POST", "/alerts", body), [a, b] * 10))
    assert {status for status, _ in results} == {200}
    assert sum(len(r["actions"]) for _, r in results) == 1
    assert rows(journal_dsn, "SELECT count(*) FROM actions") == [(1,)]
    wait_for(
        lambda: rows(journal_dsn, "SELECT state FROM actions") == [("succeeded",)],
        timeout=30,
        what="the action to succeed",
    )
    assert out.read_text() == "ran\n"


SLOW = """\
rules:
  - name: slow
    match: {{alertname: TaskmedicStaleRows}}
    steps:
      - name: sleep
        script: {{argv: ["{python}", -c, "import time; time.sleep(4)"], timeout: 60s}}
"""


def test_sigterm_stops_taking_alerts_lets_the_step_finish_and_exits_0(
    journal_dsn: str, tmp_path: Path, start_healer: Callable[[Path], Healer]
) -> None:
    config = write_config(tmp_path, journal_dsn, rules=SLOW.format(python=sys.executable))
    healer = start_healer(config)
    status, _ = healer.request("POST", "/alerts", payload("firing_stale_rows"))
    assert status == 200
    wait_for(
        lambda: rows(journal_dsn, "SELECT state FROM actions") == [("running",)],
        timeout=20,
        what="the action to run",
    )
    healer.proc.send_signal(signal.SIGTERM)
    other = payload("grouped_workers_down")
    # A request the healer reads before its loop runs the signal handler is still taken, and
    # then recorded like any other: what a 2xx says. A 503 says nothing was.
    taken = 0

    def refused() -> bool:
        nonlocal taken
        status, body = healer.request("POST", "/alerts", other)
        taken += status == 200
        return status == 503 and "shutting down" in body["error"]

    wait_for(refused, timeout=5, what="POST /alerts to answer 503 while draining")
    assert healer.request("GET", "/readyz")[0] == 503
    try:
        code = healer.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the healer did not exit:\n{healer.output()}") from None
    assert code == 0, healer.output()
    assert rows(journal_dsn, "SELECT state FROM actions") == [("succeeded",)]
    assert rows(journal_dsn, "SELECT count(*) FROM notifications") == [(1 + taken,)]


def test_without_a_journal_dsn_the_healer_runs_an_embedded_journal_in_data_dir(
    tmp_path: Path,
    start_healer: Callable[[Path], Healer],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first run needs nothing installed; the CLI reads the same embedded journal. Starting
    it says so in one line: no initdb output, no warning about XDG_RUNTIME_DIR."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    # Not under pytest's tmp_path: pgserver runs PostgreSQL as its own user when we are root,
    # and a concurrent pytest run resets the permissions of pytest's temporary folders.
    data_dir = Path(tempfile.mkdtemp(prefix="taskmedic-healer-"))
    request.addfinalizer(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    config = write_config(
        tmp_path, None, rules=SLOW.format(python=sys.executable), healer={"data_dir": str(data_dir)}
    )
    healer = start_healer(config)
    status, body = healer.request("POST", "/alerts", payload("firing_stale_rows"))
    assert status == 200
    assert body["actions"][0]["state"] == "pending"
    assert (data_dir / "journal" / "PG_VERSION").exists()
    listed = subprocess.run(
        [sys.executable, "-m", "healer.cli", "actions", "list", "--config", str(config), "--json"],
        capture_output=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == b""
    assert [i["rule"] for i in json.loads(listed.stdout)["items"]] == ["slow"]
    healer.proc.send_signal(signal.SIGTERM)
    assert healer.proc.wait(timeout=60) == 0, healer.output()
    output = healer.output()
    assert output.count(f"embedded journal created in {data_dir / 'journal'}") == 1
    for noise in ("initdb", "XDG_RUNTIME_DIR", "pgserver", "The files belonging"):
        assert noise not in output


BURST = 1000


async def _burst(port: int, pid: int, bodies: list[bytes]) -> list[bytes]:
    """Open a connection per body while the healer (`pid`) is stopped, so it accepts none,
    then let it go on, POST each body on its connection and read the status lines."""
    os.kill(pid, signal.SIGSTOP)
    try:
        # The kernel completes a handshake only for a connection the listen queue can hold;
        # the SYNs of the others are dropped and retried for as long as the healer is stopped.
        conns = await asyncio.wait_for(
            asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in bodies)), 20
        )
    except TimeoutError:
        raise AssertionError(f"not all {len(bodies)} connections were queued") from None
    finally:
        os.kill(pid, signal.SIGCONT)

    async def post(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bytes:
        head = (
            f"POST /alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH['Authorization']}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status = await reader.readline()
        await reader.read()
        writer.close()
        return status

    posts = (post(r, w, b) for (r, w), b in zip(conns, bodies, strict=True))
    return await asyncio.wait_for(asyncio.gather(*posts), 120)


def test_a_burst_of_connections_while_the_healer_is_busy_is_queued_not_reset(
    journal_dsn: str, tmp_path: Path, start_healer: Callable[[Path], Healer]
) -> None:
    """Alertmanager sends each group's notification on a connection of its own: a storm opens
    hundreds at once, often while the healer is busy. They must wait in the listen queue: an
    overflowing queue makes the kernel drop them, then reset them, and Alertmanager counts
    failed notifications and backs off. The healer is stopped (SIGSTOP) while they open.

    It starts with a soft limit of open files below the burst (it inherits this process's), so
    it also has to raise its own, as Alertmanager and Prometheus do."""
    import resource

    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn <= BURST:
        pytest.skip(f"net.core.somaxconn is {somaxconn}: the kernel caps every listen queue")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * BURST:
        pytest.skip(f"the hard limit of open files ({hard}) is below {4 * BURST}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (BURST // 4, hard))
    try:
        healer = start_healer(write_config(tmp_path, journal_dsn, rules="rules: []\n"))
    finally:
        # This process holds the other end of every connection.
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * BURST), hard))
    bodies = []
    for i in range(BURST):
        p = with_alert(
            payload("firing_stale_rows"), labels={"shard": str(i)}, fingerprint=f"{i:016x}"
        )
        bodies.append(json.dumps(p).encode())
    statuses = asyncio.run(_burst(healer.port, healer.proc.pid, bodies))
    assert set(statuses) == {b"HTTP/1.1 200 OK\r\n"}, healer.output()[-2000:]
    assert rows(journal_dsn, "SELECT count(*) FROM alerts") == [(BURST,)]
