"""/readyz of healer replicas on one journal when one of them loses its way to the journal:
that one says not ready (and refuses alerts with 503, so Alertmanager sends them elsewhere or
again), the others stay ready and keep working, and it is ready again once the way is back.

Replica `c` reaches the journal through a TCP relay of the test's own; the shared PostgreSQL
is never stopped. Replicas `a` and `b` connect directly."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.services import wait_for
from tests.support.celery_helpers import TcpLink
from tests.support.faults import RestartableHealer, post
from tests.support.ingest_helpers import payload, rows, with_alert, write_config


def _upstream(dsn: str) -> Callable[[], socket.socket]:
    """Connects to the journal's server as the DSN says: TCP, or a unix socket directory."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)

    def connect() -> socket.socket:
        if host.startswith("/"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{host}/.s.PGSQL.{port}")
            return s
        return socket.create_connection((host, port))

    return connect


def _through(dsn: str, link: TcpLink) -> str:
    info: dict[str, Any] = dict(psycopg.conninfo.conninfo_to_dict(dsn))
    info.update(host="127.0.0.1", port=str(link.port))
    return psycopg.conninfo.make_conninfo(**info)


def _readyz(healer: RestartableHealer) -> tuple[int, dict[str, Any]]:
    try:
        # http://127.0.0.1 only: the URL is built here.
        with urllib.request.urlopen(healer.url + "/readyz", timeout=10) as resp:  # noqa: S310
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def _alert(fingerprint: str) -> bytes:
    return json.dumps(with_alert(payload("firing_stale_rows"), fingerprint=fingerprint)).encode()


def test_a_replica_cut_off_from_the_journal_is_not_ready_while_the_others_stay_ready(
    journal_dsn: str, tmp_path: Path
) -> None:
    link = TcpLink(_upstream(journal_dsn))
    link.restore()
    healer = {"lease": "2s"}
    (tmp_path / "direct").mkdir()
    (tmp_path / "relayed").mkdir()
    direct = write_config(
        tmp_path / "direct",
        None,
        healer={**healer, "journal": {"dsn": journal_dsn, "connect_timeout": "1s"}},
    )
    relayed = write_config(
        tmp_path / "relayed",
        None,
        healer={**healer, "journal": {"dsn": _through(journal_dsn, link), "connect_timeout": "1s"}},
    )
    a = RestartableHealer(direct, tmp_path / "healer-a.log")
    b = RestartableHealer(direct, tmp_path / "healer-b.log")
    c = RestartableHealer(relayed, tmp_path / "healer-c.log")
    others: Counter[int] = Counter()  # what /readyz of a and b answered throughout
    last: dict[str, Any] = {}

    def c_ready_is(want: bool) -> Callable[[], bool]:
        def check() -> bool:
            for h in (a, b):
                others[_readyz(h)[0]] += 1
            status, last["c"] = _readyz(c)
            return (status == 200) == want

        return check

    try:
        for h in (a, b, c):
            h.start()  # each waits until its /readyz is 200
        link.cut()
        wait_for(c_ready_is(False), timeout=30, what="c's /readyz to say not ready")
        assert last["c"]["ready"] is False, last
        # Alerts sent to c meanwhile are refused (nothing written), those sent to a are taken
        # and run by a or b.
        wait_for(
            lambda: post(c.url, _alert("00000000000000c0")) == 503,
            timeout=30,
            what="c to refuse an alert with 503",
        )
        assert post(a.url, _alert("00000000000000a0")) == 200
        wait_for(
            lambda: rows(journal_dsn, "SELECT state FROM actions") == [("succeeded",)],
            timeout=30,
            what="the alert taken by a to be healed while c is cut off",
        )
        assert rows(journal_dsn, "SELECT fingerprint FROM alerts") == [("00000000000000a0",)]
        assert not c_ready_is(True)(), last
        link.restore()
        wait_for(c_ready_is(True), timeout=60, what="c's /readyz to say ready again")
        assert post(c.url, _alert("00000000000000c1")) == 200
    finally:
        for h in (a, b, c):
            h.stop()
        link.cut()
    assert set(others) == {200}, (others, a.output()[-2000:], b.output()[-2000:])
