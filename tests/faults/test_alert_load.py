"""Sustained load: alerts from 20 senders at a steady rate, 30 % of them copies of alerts
already sent (Alertmanager's HA pair and its resends), repeated against one healer process.
The journal holds exactly the unique set as actions; the healer's peak memory is reported
after each repeat and does not grow from one to the next.

The rate is what the senders aim at (alerts / seconds); the time it really took is reported,
not asserted (speed belongs to bench/).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.faults import COUNTS, RestartableHealer, post, report
from tests.support.ingest_helpers import payload, rows, with_alert, write_config

SENDERS = 20
DUPLICATES = 0.3

RULES = """\
rules:
  - name: load
    match: {alertname: TaskmedicStaleRows}
    approval: true      # nothing runs: the load is on the webhook and the journal
    steps:
      - name: s
        script: {argv: [/bin/true]}
"""


def _bodies(repeat: int, total: int, rng: random.Random) -> tuple[list[bytes], set[str]]:
    """`total` notifications, DUPLICATES of them copies of an earlier one, in random order."""
    unique = round(total * (1 - DUPLICATES))
    fps = [f"r{repeat}-{i:06d}" for i in range(unique)]
    sent = fps + [rng.choice(fps) for _ in range(total - unique)]
    rng.shuffle(sent)
    base = payload("firing_stale_rows")
    bodies = [
        json.dumps(with_alert(base, fingerprint=fp, labels={"shard": fp})).encode() for fp in sent
    ]
    return bodies, set(fps)


def _send(url: str, bodies: list[bytes], seconds: float) -> tuple[Counter[int], float]:
    """Post every body from SENDERS threads, paced to take about `seconds` in all."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    interval = seconds * SENDERS / len(bodies)
    start = time.monotonic()

    def sender(mine: list[bytes]) -> None:
        for i, body in enumerate(mine):
            wait = start + i * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            status = post(url, body, timeout=60)
            with lock:
                statuses[status] += 1

    threads = [
        threading.Thread(target=sender, args=(bodies[i::SENDERS],), daemon=True)
        for i in range(SENDERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    return statuses, time.monotonic() - start


@pytest.mark.timeout(120 + COUNTS.load_repeats * (COUNTS.load_seconds + 120))
def test_alerts_with_duplicates_from_20_senders_leave_exactly_the_unique_set(
    journal_dsn: str, tmp_path: Path
) -> None:
    healer = RestartableHealer(
        write_config(tmp_path, journal_dsn, rules=RULES), tmp_path / "healer.log"
    )
    healer.start()
    rng = random.Random(int(time.time()))
    peaks: list[int] = []
    expected: set[str] = set()
    try:
        for repeat in range(COUNTS.load_repeats):
            bodies, unique = _bodies(repeat, COUNTS.load_alerts, rng)
            expected |= unique
            statuses, took = _send(healer.url, bodies, COUNTS.load_seconds)
            peaks.append(healer.rss_kib())
            actions = rows(journal_dsn, "SELECT fingerprint FROM actions")
            fps = [fp for (fp,) in actions]
            report(
                f"alert load, repeat {repeat + 1}",
                alerts=len(bodies),
                unique=len(unique),
                senders=SENDERS,
                seconds=round(took, 1),
                answers=dict(statuses),
                actions=len(fps),
                peak_rss_mib=round(peaks[-1] / 1024, 1),
            )
            assert statuses == Counter({200: len(bodies)}), healer.output()[-3000:]
            assert len(fps) == len(set(fps)), "an alert became two actions"
            assert set(fps) == expected
    finally:
        healer.stop()
    # Flat: what one repeat needed, the next ones find again (allowing a little growth of
    # caches and the allocator's arenas).
    assert peaks[-1] <= peaks[0] * 1.25 + 16 * 1024, peaks
