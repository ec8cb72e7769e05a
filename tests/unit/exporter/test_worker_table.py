"""WorkerTable: liveness judged at read time from heartbeats and broker-confirmed deaths
(no services)."""

from __future__ import annotations

import math

from exporter.celery_events import MAX_FREQ, WorkerTable, _freq_of


def only(table: WorkerTable, now: float, since: float | None = None) -> object:
    (status,) = table.statuses(now, since)
    return status


def test_a_worker_confirmed_gone_is_down_and_crashed_before_its_heartbeat_expires() -> None:
    """The broker signal does not wait for 2 x freq: down (crashed) from the moment it was
    confirmed, while the heartbeat rule alone would still say online."""
    table = WorkerTable(300.0)
    table.heartbeat("w@h", 100.0, 2.0, regular=True)
    assert table.gone("w@h", 100.5)
    status = only(table, 100.6)
    assert not status.online  # type: ignore[attr-defined]
    assert status.crashed  # type: ignore[attr-defined]
    assert not table.gone("w@h", 100.7), "a worker already down is not declared down twice"


def test_a_heartbeat_sent_before_the_death_does_not_revive_a_gone_worker() -> None:
    """Only a heartbeat received after the confirmed death brings the worker back (it was
    restarted under the same name)."""
    table = WorkerTable(300.0)
    table.heartbeat("w@h", 100.0, 2.0, regular=True)
    table.gone("w@h", 100.5)
    table.heartbeat("w@h", 100.4, 2.0, regular=True)
    table.task_event("w@h", 100.9)
    assert not only(table, 101.0).online  # type: ignore[attr-defined]
    table.heartbeat("w@h", 101.0, 2.0, regular=True)
    assert only(table, 101.1).online  # type: ignore[attr-defined]


def test_heartbeat_expiry_counts_from_when_the_event_stream_reconnected() -> None:
    """Heartbeats sent while our own stream was down were never heard: a live worker does not
    read dead just because the exporter lost the broker for a while."""
    table = WorkerTable(300.0)
    table.heartbeat("w@h", 100.0, 2.0, regular=True)
    assert not only(table, 110.0).online  # type: ignore[attr-defined]
    assert only(table, 110.0, since=109.5).online  # type: ignore[attr-defined]


def test_heartbeat_freq_is_clamped_so_no_worker_stays_online_for_ever() -> None:
    """freq=inf or a huge freq from the broker cannot keep a silent worker online past
    2 x MAX_FREQ; nonsense (NaN, negative, text) falls back to the default."""
    assert _freq_of({"freq": math.inf}, 2.0) == MAX_FREQ
    assert _freq_of({"freq": 1e12}, 2.0) == MAX_FREQ
    assert _freq_of({"freq": math.nan}, 2.0) == 2.0
    assert _freq_of({"freq": -1}, 2.0) == 2.0
    assert _freq_of({"freq": "often"}, 2.0) == 2.0
    table = WorkerTable(300.0)
    table.heartbeat("w@h", 100.0, _freq_of({"freq": math.inf}, 2.0), regular=True)
    assert not only(table, 100.0 + 2 * MAX_FREQ).online  # type: ignore[attr-defined]


def test_the_worker_table_is_capped_and_counts_the_hostnames_it_drops() -> None:
    """Hostnames come from the broker: past max_workers new ones are dropped and counted,
    and the workers already known keep being followed."""
    table = WorkerTable(300.0, max_workers=2)
    for name in ("a@h", "b@h", "c@h", "d@h"):
        table.heartbeat(name, 100.0, 2.0, regular=True)
    table.heartbeat("a@h", 101.0, 2.0, regular=True)
    assert [w.hostname for w in table.statuses(101.0)] == ["a@h", "b@h"]
    assert table.dropped == 2
    assert table.statuses(101.0)[0].last_heartbeat == 101.0
