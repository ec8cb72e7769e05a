"""Three healer replicas on one journal while one of them is killed with `kill -9` again and
again: every alert an Alertmanager HA pair sends to two replicas becomes exactly one action,
every action ends, and what the killed replica held is taken over by another.

The replicas are real `taskmedic healer` processes on ports of their own, sharing one journal
DSN, with a 2 s lease so that a dead replica's claims expire quickly. Each notification is sent
twice, as both members of an Alertmanager pair do, each copy to a different replica; a copy that
gets no answer or a 503 is sent again, to the next replica (as a load balancer would), until it
is answered 200. Meanwhile replica `c` is killed whenever it is running a step, and started
again. The journal then tells who claimed what: an executor's owner is `host:pid:suffix`, so
the pid names the replica.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.services import wait_for
from tests.support.faults import COUNTS, RestartableHealer, post, report
from tests.support.ingest_helpers import payload, rows, with_alert, write_config

NAMES = ("a", "b", "c")
VICTIM = "c"
RATE = 6.0  # notifications a second
MIN_ALERTS = 20
FINAL = ("succeeded", "failed")
WORK = "import time; time.sleep(0.3)"
GAVE_UP = "none (gave up)"
# Each action's state events in order: (actor, from_state, to_state, message).
History = dict[int, list[tuple[str, str | None, str, str]]]

RULES = f"""\
rules:
  - name: replica-round
    match: {{alertname: ReplicaRound}}
    on_interrupt: retry
    max_concurrent: 12
    steps:
      - name: work
        script: {{argv: ["{sys.executable}", -c, "{WORK}"], timeout: 30s}}
"""


def _notification(n: int) -> dict[str, Any]:
    starts = f"2026-01-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000000000Z"
    return with_alert(
        payload("firing_stale_rows"),
        labels={"alertname": "ReplicaRound", "n": str(n)},
        fingerprint=f"{n:016x}",
        startsAt=starts,
    )


@dataclass
class PairSender:
    """An Alertmanager HA pair in front of the replicas: both members send each notification,
    each to a replica of its own, and each copy is sent again (to the next replica, after
    100 ms) until it is answered 200."""

    replicas: list[RestartableHealer]
    give_up: float = 120.0
    sent: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(16))
    _futures: list[Future[None]] = field(default_factory=list)

    def send(self, n: int, rng: random.Random) -> None:
        notification = _notification(n)
        self.sent.append(notification["alerts"][0]["fingerprint"])
        first = n % len(self.replicas)
        for copy, delay in ((first, 0.0), (first + 1, rng.uniform(0.0, 0.2))):
            self._futures.append(self._pool.submit(self._deliver, notification, copy, delay))

    def _deliver(self, notification: dict[str, Any], start: int, delay: float) -> None:
        time.sleep(delay)
        body = json.dumps(notification).encode()
        fp = notification["alerts"][0]["fingerprint"]
        deadline = time.monotonic() + self.give_up
        for i in itertools.count(start):
            status = post(self.replicas[i % len(self.replicas)].url, body)
            with self._lock:
                self.statuses[status] += 1
                if status == 200:
                    self.acked.add(fp)
                    return
                if status not in (0, 503):
                    self.failed.append(f"{fp}: HTTP {status}")
                    return
                if time.monotonic() > deadline:
                    self.failed.append(f"{fp}: no 200 within {self.give_up}s")
                    return
            time.sleep(0.1)

    def join(self) -> None:
        for f in self._futures:
            f.result(timeout=self.give_up + 30)
        self._pool.shutdown()


def _stream(sender: PairSender, stop: threading.Event, rng: random.Random) -> None:
    for n in itertools.count():
        if stop.is_set() and n >= MIN_ALERTS:
            return
        sender.send(n, rng)
        time.sleep(1 / RATE)


def _owner_pid(owner: str) -> int:
    return int(owner.split(":")[-2])


def _running_of(journal: str, owner: str) -> set[int]:
    got = rows(
        journal, "SELECT id FROM actions WHERE state = 'running' AND lease_owner = %s", (owner,)
    )
    return {i for (i,) in got}


def _current_owner(journal: str, pid: int) -> str | None:
    """The executor owner name of the process `pid`, once it has claimed something."""
    got = rows(
        journal,
        "SELECT actor FROM events WHERE to_state = 'running' AND from_state = 'pending'"
        " AND actor LIKE %s LIMIT 1",
        (f"%:{pid}:%",),
    )
    return got[0][0] if got else None


def _kill_victim(
    victim: RestartableHealer, journal: str, rng: random.Random
) -> tuple[str, set[int]]:
    """Wait until the victim runs a step, kill it, start it again; the executor owner it was
    and the ids of the actions it held."""
    assert victim.proc is not None
    pid = victim.proc.pid

    def running_something() -> bool:
        owner = _current_owner(journal, pid)
        return owner is not None and bool(_running_of(journal, owner))

    wait_for(running_something, timeout=60, interval=0.05, what=f"replica {VICTIM} to run a step")
    time.sleep(rng.uniform(0.0, 0.15))
    victim.kill()
    owner = _current_owner(journal, pid)
    assert owner is not None
    held = _running_of(journal, owner)  # its lease (2 s) has not expired yet
    victim.start()
    return owner, held


def _events(journal: str) -> History:
    """(actor, from_state, to_state, message) of each action's state events, in order."""
    out: History = {}
    for action_id, actor, from_state, to_state, message in rows(
        journal,
        "SELECT action_id, actor, from_state, to_state, message FROM events"
        " WHERE kind = 'state' ORDER BY id",
    ):
        out.setdefault(action_id, []).append((actor, from_state, to_state, message))
    return out


def _taken_over_by(
    history: list[tuple[str, str | None, str, str]], killed: str
) -> tuple[bool, str | None]:
    """Whether the action's run by `killed` was interrupted (its lease expired), and the owner
    of the claim that followed."""
    interrupted = False
    for actor, from_state, to_state, message in history:
        if to_state == "interrupted" and killed in message:
            interrupted = True
        elif interrupted and (from_state, to_state) == ("pending", "running"):
            return True, actor
    return interrupted, None


def _claims(history: History, replica_of: dict[int, str]) -> Counter[str]:
    """Claims (pending -> running) per replica."""
    claims: Counter[str] = Counter()
    for events in history.values():
        for actor, from_state, to_state, _ in events:
            if (from_state, to_state) == ("pending", "running"):
                claims[replica_of.get(_owner_pid(actor), f"unknown {actor}")] += 1
    return claims


def _takeovers(
    kills: list[tuple[str, set[int]]],
    history: History,
    failed_ids: set[int],
    replica_of: dict[int, str],
) -> tuple[Counter[str], list[tuple[int, str, Any]]]:
    """Who claimed each action a killed replica held; and the actions nobody took over."""
    takers: Counter[str] = Counter()
    missed: list[tuple[int, str, Any]] = []
    for owner, held in kills:
        for action_id in held:
            interrupted, by = _taken_over_by(history.get(action_id, []), owner)
            if interrupted and by is None and action_id in failed_ids:
                takers[GAVE_UP] += 1  # its third interrupted claim: checked by the test
            elif not interrupted or by is None or by == owner:
                missed.append((action_id, owner, history.get(action_id)))
            else:
                name = replica_of.get(_owner_pid(by), "?")
                takers[name if name != VICTIM else f"{VICTIM} (restarted)"] += 1
    return takers, missed


@pytest.mark.timeout(180 + COUNTS.replica_kills * 10)
def test_three_replicas_under_kill_9_run_each_alert_once_and_take_over_the_dead_ones_work(
    journal_dsn: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        journal_dsn,
        rules=RULES,
        healer={"lease": "2s", "executor_concurrency": 4},
    )
    replicas = [RestartableHealer(config, tmp_path / f"healer-{name}.log") for name in NAMES]
    replica_of: dict[int, str] = {}  # pid -> replica name, over every start
    rng = random.Random(int(time.time()))
    began = time.monotonic()
    kills: list[tuple[str, set[int]]] = []  # (owner killed, the running actions it held)
    try:
        for name, replica in zip(NAMES, replicas, strict=True):
            replica.start()
            assert replica.proc is not None
            replica_of[replica.proc.pid] = name
        victim = replicas[NAMES.index(VICTIM)]
        sender = PairSender(replicas)
        stop = threading.Event()
        stream = threading.Thread(target=_stream, args=(sender, stop, rng), daemon=True)
        stream.start()
        try:
            for _ in range(COUNTS.replica_kills):
                kills.append(_kill_victim(victim, journal_dsn, rng))
                assert victim.proc is not None
                replica_of[victim.proc.pid] = VICTIM
        finally:
            stop.set()
            stream.join(timeout=60)
            sender.join()

        def settled() -> bool:
            states = rows(journal_dsn, "SELECT state FROM actions")
            return len(states) >= len(sender.acked) and all(s in FINAL for (s,) in states)

        # Leases of the last kill expire after 2 s; the sweep runs every ~0.7 s.
        wait_for(settled, timeout=120, interval=0.25, what="every action to end")
        took = time.monotonic() - began
    finally:
        for r in replicas:
            r.stop()

    recorded = {fp for (fp,) in rows(journal_dsn, "SELECT fingerprint FROM alerts")}
    per_fp = dict(rows(journal_dsn, "SELECT fingerprint, count(*) FROM actions GROUP BY 1"))
    duplicates = {fp: n for fp, n in per_fp.items() if n != 1}
    outcomes = Counter(s for (s,) in rows(journal_dsn, "SELECT state FROM actions"))
    gave_up = rows(
        journal_dsn, "SELECT id, reason FROM actions WHERE state <> 'succeeded' ORDER BY id"
    )
    history = _events(journal_dsn)

    claims = _claims(history, replica_of)
    failed_ids = {action_id for action_id, _ in gave_up}
    takers, not_taken_over = _takeovers(kills, history, failed_ids, replica_of)
    # Whose leases expired: only killed replicas may lose one.
    killed_owners = {owner for owner, _ in kills}
    expired_of = Counter(
        message.split("the lease of ", 1)[1].split(" ", 1)[0]
        for events in history.values()
        for _, _, to_state, message in events
        if to_state == "interrupted" and "the lease of " in message
    )
    takeovers = sum(n for k, n in takers.items() if k != GAVE_UP)
    report(
        "replicas under kill -9",
        replicas=len(NAMES),
        alerts=len(sender.sent),
        copies_posted=2 * len(sender.sent),
        answers=dict(sender.statuses),
        acknowledged=len(sender.acked),
        lost=len(sender.acked - recorded),
        actions=sum(per_fp.values()),
        duplicate_actions=sum(n - 1 for n in duplicates.values()),
        kills=len(kills),
        held_at_kill=sum(len(h) for _, h in kills),
        takeovers=takeovers,
        taken_over_by=dict(takers),
        lease_expiries=sum(expired_of.values()),
        claims_per_replica=dict(sorted(claims.items())),
        outcomes=dict(outcomes),
        seconds=round(took, 1),
    )
    assert sender.failed == [], sender.failed[:5]
    assert sender.acked == set(sender.sent)
    assert sender.acked - recorded == set()
    assert duplicates == {}
    assert set(per_fp) == sender.acked
    assert set(outcomes) <= set(FINAL), outcomes
    # A step that takes 0.3 s and exits 0 fails only after MAX_ATTEMPTS interrupted claims.
    for action_id, reason in gave_up:
        assert reason.startswith("interrupted 3 times"), (action_id, reason, history[action_id])
    assert set(expired_of) <= killed_owners, (expired_of, killed_owners)
    assert not_taken_over == [], not_taken_over[:3]
    assert takeovers > 0, "no kill found the victim running a step"
    assert all(claims[name] > 0 for name in NAMES), claims
    assert not [k for k in claims if k not in NAMES], claims
