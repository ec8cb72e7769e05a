"""The Celery broker goes away under a running exporter: `taskmedic_check_up` drops to 0 and the
orphan gauge is absent, no scrape ever shows a false count, and both come back on their own.

The truth is fixed for the whole test: one `processing` row names a task id that no worker,
queue or backend knows (1 lost orphan), and the queues are empty. Every scrape (5 a second)
must show that 1, or nothing.

Redis: a `redis-server` of the test's own (on a port of its own, appendonly), killed and
started again. RabbitMQ: the machine's broker is shared and cannot be stopped, so the exporter
reaches it through a TCP relay in this test that is cut (every connection closed, new ones
refused) and restored.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.services import free_port, need_or_skip, reachable, wait_for
from tests.support.celery_helpers import TcpLink
from tests.support.faults import FULL, Scraper, report
from tests.support.orphan_tasks import add_row
from tests.support.rabbitmq import AMQP_URL


class OwnRedis:
    """A redis-server on 127.0.0.1:port that can be killed and started again."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--dir", str(self.data), "--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: reachable("127.0.0.1", self.port), timeout=10, what="redis-server")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


def _outage(scraper: Scraper, log: Path, cut: Any, restore: Any, rounds: int) -> dict[str, Any]:
    """Cut and restore the broker `rounds` times; returns the figures of the scenario."""

    def state_is(up: float, lost: float | None) -> bool:
        last = scraper.last()
        return last is not None and last[0] == up and last[1] == lost

    wait_for(lambda: state_is(1, 1), timeout=60, what=f"the true count:\n{log.read_text()}")
    for _ in range(rounds):
        cut()
        wait_for(lambda: state_is(0, None), timeout=60, what="check_up 0, the gauge absent")
        time.sleep(2 if FULL else 1)  # scrapes during the outage
        restore()
        wait_for(lambda: state_is(1, 1), timeout=60, what="the exporter to recover")
    scraper.stop()
    false = [s for s in scraper.seen if s[1] not in (None, 1) or s[2] not in (None, 0)]
    stale = [s for s in scraper.seen if s[0] == 0 and (s[1] is not None or s[2] is not None)]
    return {
        "scrapes": len(scraper.seen),
        "check_up": dict(Counter(s[0] for s in scraper.seen)),
        "false_counts": len(false),
        "values_while_down": len(stale),
        "outages": rounds,
    }


ROUNDS = 3 if FULL else 1  # outages per broker


@pytest.mark.timeout(300)
def test_redis_stopped_and_started_under_the_exporter(
    exporter_for: Any, timeline: str, tmp_path: Path
) -> None:
    need_or_skip(shutil.which("redis-server") is not None, "redis-server")
    redis = OwnRedis(tmp_path)
    redis.start()
    add_row(timeline, 1, str(uuid.uuid4()))  # the one true orphan: nobody knows its id
    try:
        port, log = exporter_for(redis.url, redis.url, ["celery"])
        figures = _outage(Scraper(port), log, redis.kill, redis.start, ROUNDS)
    finally:
        redis.kill()
    report("redis stopped and started", **figures)
    assert figures["false_counts"] == 0
    assert figures["values_while_down"] == 0


@pytest.mark.timeout(300)
def test_rabbitmq_cut_and_restored_under_the_exporter(
    exporter_for: Any, timeline: str, amqp_url: str, queue: str
) -> None:
    host_port = amqp_url.split("@", 1)[1].split("/", 1)[0]
    upstream = ("127.0.0.1", int(host_port.rsplit(":", 1)[1]))
    relay = TcpLink(lambda: socket.create_connection(upstream))
    relay.restore()
    broker = AMQP_URL.replace(host_port, f"127.0.0.1:{relay.port}")
    add_row(timeline, 1, str(uuid.uuid4()))  # the one true orphan: nobody knows its id
    try:
        port, log = exporter_for(broker, None, [queue])
        figures = _outage(Scraper(port), log, relay.cut, relay.restore, ROUNDS)
    finally:
        relay.cut()
    report("rabbitmq cut and restored", **figures)
    assert figures["false_counts"] == 0
    assert figures["values_while_down"] == 0
