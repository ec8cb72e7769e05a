"""A worker killed with `kill -9` seen from the broker in well under a second.

Celery's heartbeat rule (last heartbeat + 2 x freq) needs 2 to 4 s with the default interval.
The broker knows sooner: a killed process's connections close at once. A `PresenceWatch`
thread looks at the broker every POLL_EVERY seconds for that sign:

- Redis: every worker holds one connection subscribed to its control channel (kombu's pidbox
  fanout is a pattern subscription). `CLIENT LIST TYPE pubsub` lists those connections; one of
  our database that disappears says some process left. No connection names which worker it
  is, so every online worker is asked.
- RabbitMQ: every worker consumes its own `<hostname>.celery.pidbox` queue, auto-deleted (or
  exclusive to its connection). A passive declare answers at once: RESOURCE_LOCKED or a
  consumer means held; NOT_FOUND or no consumer means its connection is gone. Only a worker
  whose queue was once seen held is a suspect: one without remote control never has one.

A sign alone declares no one dead. It is confirmed at once with Celery's targeted `ping`
(CONFIRM_TIMEOUT): a busy worker answers (its control channel is served by the main process,
not the pool), a stopped or starved one keeps its connections so gives no sign at all. On Redis
a worker is declared down only when no more workers fail to answer than subscribed
connections vanished and stayed away (a reconnect is not a death); anything ambiguous is left
to the heartbeat rule, which stays the fallback whenever the broker gives no such sign (a Redis
that refuses CLIENT LIST, another transport, or this watch's own connection down).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import ResponseError

from exporter.celery_events import WorkerTable

__all__ = ["AMQP_SIGNAL", "HEARTBEAT_RULE", "REDIS_SIGNAL", "PresenceWatch"]

log = logging.getLogger(__name__)

POLL_EVERY = 0.15  # seconds between two looks at the broker
CONFIRM_TIMEOUT = 0.5  # how long a suspected worker has to answer ping
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0

HEARTBEAT_RULE = "heartbeat rule"
REDIS_SIGNAL = "broker signal (redis client list)"
AMQP_SIGNAL = "broker signal (rabbitmq pidbox queue)"


class PresenceWatch:
    """Declares a worker down in the `WorkerTable` as soon as the broker shows its connection
    gone and a ping confirms it; `method` says whether that signal is in use right now."""

    def __init__(
        self,
        app: Celery,
        table: WorkerTable,
        where: str,
        *,
        listening_since: Callable[[], float | None],
        on_gone: Callable[[str], None] = lambda hostname: None,
        scrub: Callable[[str], str] = str,
    ) -> None:
        self._app = app
        self._table = table
        self._where = where
        # When our event stream last connected; None while it is down (liveness unknown then).
        self._listening_since = listening_since
        self._scrub = scrub
        self._on_gone = on_gone  # told each worker it sets down, from this thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        probe = app.connection_for_read()  # not connected: only asks the transport
        self._driver = probe.transport.driver_type
        self._errors: tuple[type[BaseException], ...] = (
            KombuError,
            OSError,
            *probe.connection_errors,
        )
        self._channel_errors: tuple[type[BaseException], ...] = tuple(probe.channel_errors)
        probe.release()
        self._supported = self._driver in ("redis", "amqp")
        self._working = False  # True while a look at the broker succeeds
        self._subscribers: set[str] | None = None  # Redis: pubsub client ids of our database
        # RabbitMQ: online workers whose pidbox queue was seen held, so that they have a
        # control channel whose loss means something.
        self._answering: set[str] = set()

    @property
    def method(self) -> str:
        """How a killed worker is told from a live one right now (shown on `/`)."""
        if self._working:
            return REDIS_SIGNAL if self._driver == "redis" else AMQP_SIGNAL
        return HEARTBEAT_RULE

    def start(self, name: str) -> None:
        if not self._supported:
            return
        self._thread = threading.Thread(target=self._run, name=f"taskmedic-presence-{name}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                # Two connections: kombu's Redis channel leaves its client in the middle of a
                # BRPOP after a ping, so CLIENT LIST gets a connection of its own.
                with (
                    self._app.connection_for_read() as conn,
                    self._app.connection_for_read() as looking,
                ):
                    conn.ensure_connection(max_retries=0)
                    looking.ensure_connection(max_retries=0)
                    self._watch(conn, looking)
            except _Unavailable as exc:
                log.warning(
                    "celery workers on %s: no broker signal (%s); the heartbeat rule decides",
                    self._where,
                    self._scrub(str(exc)),
                )
                return
            except self._errors as exc:
                failures += 1
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "celery worker presence on %s: %s: %s (retrying)",
                    self._where,
                    type(exc).__name__,
                    self._scrub(str(exc)),
                )
            else:
                return  # stopped
            finally:
                self._working = False
                self._subscribers = None
            self._stop.wait(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(failures - 1, 0)))

    def _watch(self, conn: Any, looking: Any) -> None:
        look = self._look_redis if self._driver == "redis" else self._look_amqp
        while not self._stop.is_set():
            started = time.monotonic()
            look(conn, looking)
            # A look costs one round trip on Redis but one passive declare per worker on
            # RabbitMQ (about 1.5 ms each): never spend more than half the time looking.
            pause = max(POLL_EVERY, time.monotonic() - started)
            self._working = True
            self._stop.wait(pause)

    # --- Redis ------------------------------------------------------------------------------

    def _pubsub_clients(self, conn: Any) -> set[str]:
        client = conn.default_channel.client
        db = str(client.connection_pool.connection_kwargs.get("db", 0))
        try:
            listed = client.client_list(_type="pubsub")
        except ResponseError as exc:  # CLIENT denied by an ACL or renamed by the provider
            raise _Unavailable(f"CLIENT LIST refused: {exc}") from None
        return {str(c["id"]) for c in listed if str(c.get("db")) == db}

    def _look_redis(self, conn: Any, looking: Any) -> None:
        now = self._pubsub_clients(looking)
        before, self._subscribers = self._subscribers, now
        if before is None or not (before - now):
            return
        at = time.time()
        suspects = self._online()
        if not suspects:
            return
        silent = self._silent(conn, suspects)
        if not silent:
            return
        after = self._pubsub_clients(looking)
        self._subscribers = after
        # Connections that left and were not replaced by a reconnect: at most that many
        # workers can be gone. More silent workers than that is ambiguous (one may be only
        # slow): the heartbeat rule decides for them.
        gone = len(before - after) - len(after - before)
        if 0 < len(silent) <= gone:
            self._declare(silent, at, "its Redis control connection closed")

    # --- RabbitMQ ---------------------------------------------------------------------------

    def _held(self, conn: Any, hostname: str) -> bool:
        """Whether the worker's pidbox queue still has a consumer (its connection is open)."""
        queue = self._app.control.mailbox.get_queue(hostname).name
        channel = conn.channel()
        try:
            _, _, consumers = channel.queue_declare(queue=queue, passive=True)
        except self._channel_errors as exc:
            # RESOURCE_LOCKED: exclusive to a connection that is still open.
            return getattr(exc, "code", None) == 405
        finally:
            # Already closed by the broker after NOT_FOUND or RESOURCE_LOCKED.
            with contextlib.suppress(*self._channel_errors):
                channel.close()
        return bool(consumers)

    def _look_amqp(self, conn: Any, looking: Any) -> None:
        # A queue seen held proves the worker has a control channel, so its silence later
        # means something (a worker without remote control never has one).
        since = self._listening_since()
        if since is None:
            return
        online = [w.hostname for w in self._table.statuses(time.time(), since) if w.online]
        self._answering &= set(online)
        suspects = []
        for hostname in online:
            if self._held(looking, hostname):
                self._answering.add(hostname)
            elif hostname in self._answering:
                suspects.append(hostname)
        if not suspects:
            return
        at = time.time()
        silent = self._silent(conn, suspects)
        still_gone = [h for h in silent if not self._held(looking, h)]
        if still_gone:
            self._declare(still_gone, at, "its RabbitMQ pidbox queue lost its consumer")

    # --- both -------------------------------------------------------------------------------

    def _online(self) -> list[str]:
        since = self._listening_since()
        if since is None:
            return []  # we cannot tell who lives: nothing to confirm against
        return [w.hostname for w in self._table.statuses(time.time(), since) if w.online]

    def _silent(self, conn: Any, hostnames: Sequence[str]) -> list[str]:
        """The hostnames that do not answer a targeted ping within CONFIRM_TIMEOUT."""
        replies = self._app.control.ping(
            destination=list(hostnames), timeout=CONFIRM_TIMEOUT, connection=conn
        )
        answered = {name for reply in replies or [] for name in reply}
        return [h for h in hostnames if h not in answered]

    def _declare(self, hostnames: Sequence[str], at: float, why: str) -> None:
        for hostname in hostnames:
            if self._table.gone(hostname, at):
                log.info("celery worker %s is down: %s and it did not answer ping", hostname, why)
                self._on_gone(hostname)


class _Unavailable(Exception):
    """The broker does not give the signal (the heartbeat rule stays in charge)."""
