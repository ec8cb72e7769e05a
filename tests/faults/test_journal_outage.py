"""The journal goes away under steady alert traffic: every alert is acknowledged and recorded,
or refused with 503 (Alertmanager then sends it again); the healer serves again on its own.

The restart uses a PostgreSQL of the test's own (pgserver, in a temporary folder): the
machine's server is shared and is never stopped. `pg_terminate_backend` runs on the shared
server, but only against the connections to this test's own journal database.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.services import wait_for
from tests.support.faults import COUNTS, RestartableHealer, post, report
from tests.support.ingest_helpers import payload, rows, with_alert, write_config

SENDERS = 4


@dataclass
class Traffic:
    """SENDERS threads posting alerts with fingerprints of their own, one after another,
    until stopped; what each alert was answered."""

    url: str
    answers: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _send(self, sender: int) -> None:
        n = 0
        while not self._stop.is_set():
            fp = f"s{sender}-{n}"
            body = with_alert(payload("firing_stale_rows"), fingerprint=fp, labels={"n": fp})
            self.answers[fp] = post(self.url, json.dumps(body).encode())
            n += 1
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for i in range(SENDERS):
            t = threading.Thread(target=self._send, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def count(self) -> Counter[int]:
        return Counter(self.answers.values())


def _check(
    scenario: str, traffic: Traffic, journal: str, healer: RestartableHealer, **figures: object
) -> None:
    recorded = {fp for (fp,) in rows(journal, "SELECT fingerprint FROM alerts")}
    acked = {fp for fp, status in traffic.answers.items() if status == 200}
    refused = {fp for fp, status in traffic.answers.items() if status == 503}
    counts = traffic.count()
    report(
        scenario,
        alerts=len(traffic.answers),
        answers=dict(counts),
        lost=len(acked - recorded),
        refused_then_found_recorded=len(refused & recorded),
        **figures,
    )
    assert set(counts) <= {200, 503}, healer.output()[-3000:]
    assert acked - recorded == set()
    assert healer.starts == 1, "the healer was started again"
    assert healer.proc is not None
    assert healer.proc.poll() is None, healer.output()[-3000:]


def _serves_again(healer: RestartableHealer) -> None:
    body = json.dumps(with_alert(payload("firing_stale_rows"), fingerprint="after")).encode()
    wait_for(lambda: post(healer.url, body) == 200, timeout=30, what="the healer to serve again")


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A PostgreSQL of this test's own: (DSN of its `postgres` database, stop, start)."""
    from pgserver import _commands
    from pgserver.postgres_server import get_server

    # Not under pytest's tmp_path: pgserver runs PostgreSQL as its own user when we are root.
    data = Path(tempfile.mkdtemp(prefix="taskmedic-faults-pg-"))
    server = get_server(data, cleanup_mode="stop")

    def stop() -> None:
        pg_ctl: Callable[..., str] = _commands.__dict__["pg_ctl"]  # made at import time
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    def start() -> None:
        server.ensure_postgres_running()

    try:
        yield server.get_uri(), stop, start
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.timeout(120 + 2 * COUNTS.outage_seconds)
def test_a_restarted_postgresql_costs_503s_only_and_the_healer_recovers_by_itself(
    own_postgres: tuple[str, Callable[[], None], Callable[[], None]], tmp_path: Path
) -> None:
    dsn, stop, start = own_postgres
    # A request waits up to connect_timeout for a connection: an outage shorter than that
    # costs nothing but time, so the outage below is longer.
    config = write_config(
        tmp_path,
        None,
        rules="rules: []\n",
        healer={"journal": {"dsn": dsn, "connect_timeout": "1s"}},
    )
    healer = RestartableHealer(config, tmp_path / "healer.log")
    healer.start()
    restarts = 0
    try:
        with Traffic(healer.url) as traffic:
            deadline = time.monotonic() + COUNTS.outage_seconds
            while time.monotonic() < deadline:
                time.sleep(1.0)
                stop()
                time.sleep(2.5)  # down longer than connect_timeout
                start()
                restarts += 1
                _serves_again(healer)
        _check("postgresql restarted", traffic, dsn, healer, restarts=restarts)
        # Down longer than connect_timeout: some alert must have met it.
        assert traffic.count()[503] > 0, "the outage was never seen"
    finally:
        healer.stop()


@pytest.mark.timeout(120 + 2 * COUNTS.outage_seconds)
def test_killed_journal_connections_cost_503s_only_and_the_healer_recovers_by_itself(
    journal_dsn: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, journal_dsn, rules="rules: []\n")
    healer = RestartableHealer(config, tmp_path / "healer.log")
    healer.start()
    dbname = psycopg.conninfo.conninfo_to_dict(journal_dsn)["dbname"]
    terminated = 0
    try:
        with (
            Traffic(healer.url) as traffic,
            psycopg.connect(journal_dsn, autocommit=True) as admin,
        ):
            deadline = time.monotonic() + COUNTS.outage_seconds
            while time.monotonic() < deadline:
                time.sleep(0.3)
                # Only the healer's connections: those to this test's own journal database.
                killed = admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchone()
                terminated += killed[0] if killed else 0
        _serves_again(healer)
        _check("pg_terminate_backend", traffic, journal_dsn, healer, terminated=terminated)
        # A connection killed while idle is replaced before use and costs no 503, so the
        # number of 503s is up to chance; that connections were killed is not.
        assert terminated > 0
    finally:
        healer.stop()
