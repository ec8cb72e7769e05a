"""Worker liveness from a Celery cluster's event stream, judged at read time.

A daemon thread consumes the cluster's events with Celery's public `app.events.Receiver` and
records, per worker hostname, when we last heard from it and its heartbeat interval. Nothing is
decided when an event arrives: `WorkerTable.statuses(now)` applies Celery's own expiry rule
(`celery.events.state.heartbeat_expires`: last heartbeat + 2 * freq) at the moment it is asked,
so a worker killed with `kill -9` turns offline on time even though no event announces it.

Why the receive time and not the worker's timestamp: the event's `timestamp` is the worker's
clock. A worker whose clock runs ahead would stay "alive" long after its last heartbeat, and a
dead worker must never look alive. `local_received` is our own clock, stamped by the receiver
when the event reaches us, so skew cannot move the deadline (Celery's `State` uses the same
field for its heartbeats). The price: an event delayed in the broker looks fresher than it is;
each connection consumes a fresh, auto-deleted queue so no backlog from an earlier connection
is replayed with new receive times.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.events.state import heartbeat_expires
from kombu.exceptions import KombuError

from exporter.task_schedule import TaskTable

log = logging.getLogger(__name__)

DEFAULT_FREQ = 2.0  # Celery's default worker heartbeat interval, in seconds
# A heartbeat's freq is the worker's word, clamped: freq=inf would keep a dead worker online
# for ever, freq=0.001 would make a live one flap.
MIN_FREQ, MAX_FREQ = 0.5, 300.0
# Hostnames come from the broker: anyone who can publish an event can invent them. Past this
# many, new ones are dropped (and counted) instead of growing the table without bound.
MAX_WORKERS = 1000
DRAIN_INTERVAL = 0.5  # how often the consumer loop comes up for air when no event arrives
# The consumer loop passes through on_iteration at least every DRAIN_INTERVAL while the
# connection works; a loop silent for longer than this is stuck, whatever the socket says.
STALL_AFTER = 5.0
PROBE_EVERY = 2.0  # seconds between two PINGs of a Redis broker from the consumer loop
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0
# With enable_events, how often workers are asked to send task events: a worker that restarts
# without -E is back to silence until the next request (Flower asks every 5 s; a periodic
# task's expectation is minutes, so this need not be as eager).
ENABLE_EVENTS_EVERY = 30.0


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as of the moment it was asked about."""

    hostname: str
    last_heartbeat: float  # Unix time, our clock, when we last heard from the worker
    freq: float  # the worker's heartbeat interval in seconds
    online: bool
    # Offline without a goodbye (worker-offline): killed, hung or cut off. A clean stop is
    # offline but never crashed.
    crashed: bool = False


@dataclass
class _Seen:
    last_heartbeat: float
    freq: float
    offline_at: float | None = None  # set by a worker-offline event (clean shutdown)
    gone_at: float | None = None  # its connection closed and it did not answer ping


def _freq_of(event: Mapping[str, Any], default: float) -> float:
    try:
        freq = float(event.get("freq", default))
    except (TypeError, ValueError):
        return default
    if math.isnan(freq) or freq <= 0:
        return default
    return min(max(freq, MIN_FREQ), MAX_FREQ)


class WorkerTable:
    """What we heard from each worker; liveness is computed when read, never stored."""

    def __init__(
        self,
        purge_offline_after: float,
        forget_crashed_after: float | None = None,
        *,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        self._purge_after = purge_offline_after
        self._forget_crashed_after = forget_crashed_after
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self.dropped = 0  # hostnames not tracked because the table was full

    def heartbeat(self, hostname: str, received: float, freq: float, *, regular: bool) -> None:
        """worker-online or worker-heartbeat: the worker is alive as of `received`.

        Only a regular heartbeat sets the interval of a worker already known: the heartbeat a
        worker sends on request (Celery's `heartbeat` control command, which our receiver
        broadcasts on connect) always claims freq=5, whatever the worker's real interval.
        """
        with self._lock:
            seen = self._seen.get(hostname)
            if seen is None:
                if len(self._seen) >= self._max_workers:
                    self.dropped += 1
                    return
                self._seen[hostname] = _Seen(received, freq)
                return
            if seen.gone_at is not None and received <= seen.gone_at:
                return  # sent before it died, received late: no proof of life
            seen.last_heartbeat = max(seen.last_heartbeat, received)
            if regular:
                seen.freq = freq
            seen.offline_at = seen.gone_at = None

    def gone(self, hostname: str, at: float) -> bool:
        """The broker saw the worker's connection close and it did not answer ping: down (and
        crashed) as of `at`, without waiting for its heartbeat to expire. True when this
        changed the worker from online to down."""
        with self._lock:
            seen = self._seen.get(hostname)
            if seen is None or seen.offline_at is not None or seen.gone_at is not None:
                return False
            seen.gone_at = at
            return True

    def task_event(self, hostname: str, received: float) -> None:
        """A task event sent by a worker also proves it alive, but only revives no one:
        a worker that said goodbye stays offline until it says hello again."""
        with self._lock:
            seen = self._seen.get(hostname)
            if seen is not None and seen.offline_at is None and seen.gone_at is None:
                seen.last_heartbeat = max(seen.last_heartbeat, received)

    def offline(self, hostname: str, received: float) -> None:
        """worker-offline: a clean shutdown, offline at once."""
        with self._lock:
            seen = self._seen.get(hostname)
            if seen is None:
                return
            seen.offline_at = received

    def statuses(self, now: float, listening_since: float | None = None) -> list[WorkerStatus]:
        """Every worker still worth reporting as of `now`, sorted by hostname.

        A worker is offline from its goodbye event, from the moment the broker showed it gone
        (`gone`), or from the moment its last heartbeat expired, whichever is first. A
        heartbeat cannot have been heard before `listening_since` (our event stream
        reconnected then), so the expiry counts from then at the earliest: an outage of ours
        never makes a live worker read dead. A worker that said goodbye is forgotten after
        purge_offline_after, so a clean stop (a deploy, autoscaling) leaves no series behind.
        A crashed one stays listed until it comes back, or forget_crashed_after if set: an
        alert on it must not resolve merely because its series went away.
        """
        out = []
        with self._lock:
            for hostname, seen in list(self._seen.items()):
                heard = max(seen.last_heartbeat, listening_since or 0.0)
                expires = heartbeat_expires(heard, seen.freq)
                if seen.gone_at is not None:
                    expires = min(expires, seen.gone_at)
                crashed = seen.offline_at is None and now >= expires
                offline_since = expires if crashed else seen.offline_at
                keep_for = self._forget_crashed_after if crashed else self._purge_after
                if (
                    offline_since is not None
                    and keep_for is not None
                    and now - offline_since > keep_for
                ):
                    del self._seen[hostname]
                    continue
                out.append(
                    WorkerStatus(
                        hostname, seen.last_heartbeat, seen.freq, offline_since is None, crashed
                    )
                )
        return sorted(out, key=lambda w: w.hostname)


class EventStream:
    """The thread that consumes a cluster's events into a `WorkerTable`, reconnecting with a
    bounded backoff while the broker is away."""

    def __init__(
        self,
        app: Celery,
        table: WorkerTable,
        where: str,
        clock: Callable[[], float] = time.time,
        *,
        tasks: TaskTable | None = None,
        enable_events: bool = False,
        scrub: Callable[[str], str] = str,
    ) -> None:
        self._app = app
        self._scrub = scrub  # hides the broker's secrets in an error before it is logged
        self._table = table
        self._tasks = tasks
        self._enable_events = enable_events
        self._last_enable = 0.0
        self._conn: Any = None
        self._connected_since: float | None = None  # our clock, first pass after a connect
        self._where = where  # broker URL with the password masked, for logs
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self._consuming = False
        self._last_iteration = 0.0  # time.monotonic() of the consumer loop's last pass
        self._probe: Callable[[], object] | None = None
        self._last_probe = 0.0
        probe = app.connection_for_read()  # not connected: only asks the transport its errors
        self._errors: tuple[type[BaseException], ...] = (
            KombuError,
            OSError,
            *probe.connection_errors,
            *probe.channel_errors,
        )
        probe.release()

    @property
    def up(self) -> bool:
        """True while connected and the consumer loop is alive (passed through recently)."""
        return self._consuming and time.monotonic() - self._last_iteration < STALL_AFTER

    @property
    def connected_since(self) -> float | None:
        """Unix time (our clock) since which events have arrived without a gap, or None while
        the stream is down: an event sent before then may have been missed."""
        return self._connected_since if self.up else None

    def start(self, name: str) -> None:
        if self._thread is not None:
            raise RuntimeError("the event stream is already started")
        self._thread = threading.Thread(target=self._run, name=f"taskmedic-events-{name}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the consumer thread ----------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # consecutive attempts that ended without ever consuming
        while not self._stop.is_set():
            try:
                self._consume_once()
            except self._errors as exc:
                failures = 1 if self._consuming else failures + 1
                # One warning per outage, not one per retry.
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "celery events from %s: %s: %s (retrying)",
                    self._where,
                    type(exc).__name__,
                    self._scrub(str(exc)),
                )
            except Exception:
                # Not a broker outage: a bug or an unexpected transport error. Log it in full
                # and keep the monitor alive; broker_up reads False meanwhile.
                failures = 1 if self._consuming else failures + 1
                log.exception("celery events from %s: unexpected error", self._where)
            finally:
                self._consuming = False
                self._connected_since = None
                self._receiver = None
                self._conn = None
            if not self._stop.is_set():
                self._stop.wait(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(failures - 1, 0)))

    def _consume_once(self) -> None:
        with self._app.connection_for_read() as conn:
            # Fail fast instead of kombu's own endless retry: our loop owns the backoff and
            # must notice stop() in time.
            conn.ensure_connection(max_retries=0)
            receiver = self._app.events.Receiver(
                conn,
                handlers={
                    "worker-heartbeat": self._on_heartbeat,
                    "worker-online": self._on_heartbeat,
                    "worker-offline": self._on_offline,
                    "*": self._on_other,
                },
            )
            receiver.connect_max_retries = 0
            receiver.on_iteration = self._on_iteration
            # A Redis that stops answering leaves the consumer loop spinning on poll timeouts,
            # so ask it something now and then (PING, on a connection of its own). AMQP has
            # heartbeats for that (broker_heartbeat, checked by the loop itself).
            is_redis = conn.transport.driver_type == "redis"
            self._probe = conn.default_channel.client.ping if is_redis else None
            self._last_probe = time.monotonic()
            self._last_enable = 0.0
            self._conn = conn
            self._receiver = receiver
            if self._stop.is_set():
                return
            # wakeup=True asks every worker for a heartbeat now, so live workers are known
            # within a round trip instead of a heartbeat interval.
            for _ in receiver.consume(
                limit=None, timeout=None, safety_interval=DRAIN_INTERVAL, wakeup=True
            ):
                pass

    def _on_iteration(self) -> None:
        now = time.monotonic()
        if self._probe is not None and now - self._last_probe >= PROBE_EVERY:
            self._probe()  # raises (socket timeout) when the broker no longer answers
            self._last_probe = now = time.monotonic()
        if self._enable_events and now - self._last_enable >= ENABLE_EVENTS_EVERY:
            # Celery's public control command, the one `celery control enable_events` sends;
            # a broadcast with no reply, on the connection we already hold.
            self._app.control.enable_events(connection=self._conn)
            self._last_enable = now
        self._last_iteration = now
        if not self._consuming:
            self._connected_since = self._clock()
        self._consuming = True

    def _received(self, event: Mapping[str, Any]) -> float:
        received = event.get("local_received")
        return float(received) if isinstance(received, int | float) else self._clock()

    def _on_heartbeat(self, event: Mapping[str, Any]) -> None:
        hostname = event.get("hostname")
        if isinstance(hostname, str):
            # The worker's own heartbeats and worker-online carry its load ("active",
            # "processed"); one sent on request carries only freq=5 and the software info.
            regular = event.get("type") == "worker-online" or "active" in event
            freq = _freq_of(event, DEFAULT_FREQ)
            self._table.heartbeat(hostname, self._received(event), freq, regular=regular)

    def _on_offline(self, event: Mapping[str, Any]) -> None:
        hostname = event.get("hostname")
        if isinstance(hostname, str):
            self._table.offline(hostname, self._received(event))

    def _on_other(self, event: Mapping[str, Any]) -> None:
        kind, hostname = event.get("type", ""), event.get("hostname")
        # task-sent comes from the client that sent the task, not from a worker.
        is_task_event = isinstance(kind, str) and kind.startswith("task-") and kind != "task-sent"
        if not is_task_event and kind != "task-sent":
            return
        received = self._received(event)
        if is_task_event and isinstance(hostname, str):
            self._table.task_event(hostname, received)
        if self._tasks is not None:
            self._tasks.event(kind, event.get("uuid"), event.get("name"), received)
