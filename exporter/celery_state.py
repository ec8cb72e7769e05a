"""What a Celery cluster knows: which workers live (from events) and where a task id stands.

`ClusterMonitor` is the exporter's one handle on a cluster. Liveness comes from the event
stream (see `exporter.celery_events`) and is judged when `snapshot()` is called. `task_traces()`
answers "is this task still somewhere?" for the orphan check, looking in the order a task moves
through a cluster: the broker queue, then the workers, then the result backend. A task only
moves forward, so one that is in none of them when each is looked at was not merely in transit
between two looks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from celery import states
from celery.backends.base import BaseKeyValueStoreBackend, DisabledBackend
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from exporter.base.connections import CeleryConfig, celery_app
from exporter.base.types import mask_dsn
from exporter.celery_events import EventStream, WorkerStatus, WorkerTable
from exporter.config import PeriodicTask
from exporter.errors import CheckUnknown
from exporter.task_schedule import TaskExpectation, TaskStatus, TaskTable
from exporter.worker_presence import PresenceWatch

__all__ = [
    "ClusterMonitor",
    "ClusterSnapshot",
    "TaskMatch",
    "TaskStatus",
    "TaskTrace",
    "WorkerStatus",
]

log = logging.getLogger(__name__)

_PAGE = 1000  # queue messages read per LRANGE, result keys per MGET
_FINISHED_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})


class TaskTrace(StrEnum):
    """Where a task id was found. Only LOST and FINISHED say the task no longer runs."""

    ACTIVE = "active"  # executing on a live worker
    RESERVED = "reserved"  # prefetched by a live worker, waiting for a slot
    SCHEDULED = "scheduled"  # held by a live worker until its ETA/countdown
    QUEUED = "queued"  # waiting in a broker queue
    FINISHED = "finished"  # the result backend says SUCCESS, FAILURE or REVOKED
    LOST = "lost"  # nowhere: no worker, no queue, no final result
    UNKNOWN = "unknown"  # cannot tell: a queue we cannot read holds messages


_WORKER_STATES = {
    "active": TaskTrace.ACTIVE,
    "reserved": TaskTrace.RESERVED,
    "scheduled": TaskTrace.SCHEDULED,
}


@dataclass(frozen=True)
class ClusterSnapshot:
    """A cluster as of one moment: is its broker reachable, which workers live."""

    cluster: str
    broker_up: bool
    # Empty while the event stream is down: liveness is unknown then, never "all offline".
    workers: list[WorkerStatus] = field(default_factory=list)
    # Declared periodic tasks; empty while the event stream is down (nothing can be judged).
    tasks: list[TaskStatus] = field(default_factory=list)
    task_events: int = 0  # task events received since start, from any worker
    # How a killed worker is told from a live one right now: a broker signal or the
    # heartbeat rule (exporter.worker_presence).
    liveness_method: str = "heartbeat rule"
    workers_dropped: int = 0  # hostnames ignored because the worker table was full


class ClusterMonitor:
    """Live view of one Celery cluster: worker liveness from its events, task whereabouts on
    demand. `start()` before use, `stop()` at the end."""

    def __init__(self, name: str, config: CeleryConfig, tasks: Iterable[PeriodicTask] = ()) -> None:
        self.name = name
        self.config = config
        # Reads only: it sends no task and creates nothing beyond the reply queues of inspect
        # and the event queue, which the broker auto-deletes.
        self._app = celery_app(config, name=name)
        self._where = mask_dsn(config.broker.get_secret_value())
        self._table = WorkerTable(config.purge_offline_after, config.forget_crashed_after)
        self._tasks = TaskTable(
            {t.task: TaskExpectation(t.expect_every, t.effective_grace) for t in tasks}
        )
        self._events = EventStream(
            self._app,
            self._table,
            self._where,
            tasks=self._tasks,
            enable_events=config.enable_events,
            scrub=config.scrub,
        )
        self._presence = PresenceWatch(
            self._app,
            self._table,
            self._where,
            listening_since=lambda: self._events.connected_since,
            on_gone=self._worker_gone,
            scrub=config.scrub,
        )
        self._gone_listeners: list[Callable[[str], object]] = []
        probe = self._app.connection_for_read()  # not connected; only asks for error classes
        self._broker_errors: tuple[type[BaseException], ...] = (
            KombuError,
            OSError,
            RedisError,  # a queue key that is not a list, a refused command
            *probe.connection_errors,
            *probe.channel_errors,
        )
        self._channel_errors: tuple[type[BaseException], ...] = tuple(probe.channel_errors)
        self._peekable = probe.transport.driver_type == "redis"
        probe.release()

    def start(self) -> None:
        """Start consuming the event stream and watching the broker for killed workers, each
        in a daemon thread (returns at once)."""
        self._events.start(self.name)
        self._presence.start(self.name)

    def on_worker_gone(self, listener: Callable[[str], object]) -> None:
        """Call `listener(hostname)` each time the broker signal sets a worker down (from the
        watching thread: the listener must only hand the news over, thread-safely)."""
        self._gone_listeners.append(listener)

    def _worker_gone(self, hostname: str) -> None:
        for listener in list(self._gone_listeners):
            listener(hostname)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and close the app's connections."""
        self._presence.stop(timeout)
        self._events.stop(timeout)
        self._app.close()

    def snapshot(self, now: float | None = None) -> ClusterSnapshot:
        """Broker reachability and every worker's liveness as of `now` (default: this instant).

        Never blocks on the broker: liveness is computed from the last heartbeats and what the
        broker showed of the workers' connections. While our own event stream is down no
        worker is listed: we cannot tell a dead worker from one we cannot hear.
        """
        at = time.time() if now is None else now
        since = self._events.connected_since
        return ClusterSnapshot(
            self.name,
            since is not None,
            self._table.statuses(at, since) if since is not None else [],
            self._tasks.statuses(at, since) if since is not None else [],
            self._tasks.events,
            self._presence.method,
            self._table.dropped,
        )

    # --- task whereabouts -------------------------------------------------------------------

    def task_traces(self, task_ids: Iterable[str]) -> dict[str, TaskTrace]:
        """Where each task id is now. Blocking (up to about inspect_timeout plus a few
        round trips): run it in a thread. Raises CheckUnknown when the broker or the result
        backend cannot be reached, because then "lost" could be false.
        """
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return {}
        try:
            with self._app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=0)
                # Queue first, workers second, result backend last: the order a task moves in.
                if self._peekable:
                    queued = self._peek_redis(conn, set(wanted))
                    queues_empty = True  # not needed: every message was read
                else:
                    queued = set()
                    queues_empty = self._queues_empty(conn)
                on_workers, replied = self._ask_workers(conn, wanted)
        except self._broker_errors as exc:
            raise CheckUnknown(
                f"celery cluster {self.name!r}: broker {self._where} unreachable: "
                f"{self.config.scrub(str(exc)) or type(exc).__name__}"
            ) from None

        finished = self._finished([t for t in wanted if t not in on_workers and t not in queued])
        readable = self._peekable or queues_empty
        nowhere = TaskTrace.LOST if readable and not self._silent(replied) else TaskTrace.UNKNOWN
        return {
            t: on_workers.get(t)
            or (TaskTrace.QUEUED if t in queued else None)
            or (TaskTrace.FINISHED if t in finished else nowhere)
            for t in wanted
        }

    def task_traces_by_argument(
        self, match: TaskMatch, values: Iterable[str]
    ) -> dict[str, TaskTrace]:
        """Where the task of each row stands when the app stores no task id: a row's value
        (say a timeline id) is matched against one argument of the named tasks, on the
        workers (active, reserved, scheduled) and in the configured queues.

        Blocking, like `task_traces`. No result backend can help (it is keyed by task id),
        so the answer is a place or LOST; UNKNOWN where a queue holds messages we cannot read
        (AMQP, or a body that is not JSON) for these tasks.
        """
        wanted = set(dict.fromkeys(values))
        if not wanted:
            return {}
        try:
            with self._app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=0)
                if self._peekable:
                    queued, unreadable = self._peek_redis_arguments(conn, match)
                else:
                    queued, unreadable = set(), not self._queues_empty(conn)
                on_workers, replied = self._workers_by_argument(match)
        except self._broker_errors as exc:
            raise CheckUnknown(
                f"celery cluster {self.name!r}: broker {self._where} unreachable: "
                f"{self.config.scrub(str(exc)) or type(exc).__name__}"
            ) from None
        nowhere = TaskTrace.UNKNOWN if unreadable or self._silent(replied) else TaskTrace.LOST
        return {
            v: on_workers.get(v) or (TaskTrace.QUEUED if v in queued else nowhere) for v in wanted
        }

    def _silent(self, replied: set[str]) -> bool:
        """Whether a worker alive by its heartbeats did not answer inspect in time: a busy or
        slow worker may hold a task it did not get to report, so "lost" could be false."""
        return any(
            w.online and w.hostname not in replied for w in self._table.statuses(time.time())
        )

    def _workers_by_argument(self, match: TaskMatch) -> tuple[dict[str, TaskTrace], set[str]]:
        """Celery's public inspect commands, all three at once (each waits inspect_timeout
        for every worker's reply, so one after another would take three times as long); and
        the workers that answered all three."""
        found: dict[str, TaskTrace] = {}
        with ThreadPoolExecutor(3, thread_name_prefix="taskmedic-inspect") as pool:
            asked = {
                TaskTrace.ACTIVE: pool.submit(self._inspect_fresh, "active"),
                TaskTrace.RESERVED: pool.submit(self._inspect_fresh, "reserved"),
                TaskTrace.SCHEDULED: pool.submit(self._inspect_fresh, "scheduled"),
            }
            replies = {trace: future.result() for trace, future in asked.items()}
        answered = [set(r) if isinstance(r, Mapping) else set() for r in replies.values()]
        replied = set.intersection(*answered)
        for trace in (TaskTrace.SCHEDULED, TaskTrace.RESERVED, TaskTrace.ACTIVE):
            for requests in (replies[trace] or {}).values():
                if not isinstance(requests, list):
                    continue
                for request in requests:
                    info = request.get("request") if trace == TaskTrace.SCHEDULED else request
                    if isinstance(info, Mapping):
                        value = match.value_of(
                            info.get("name"), info.get("args"), info.get("kwargs")
                        )
                        if value is not None:
                            found[value] = trace  # ACTIVE last: it wins
        return found, replied

    def _inspect_fresh(self, command: str) -> Any:
        """One inspect broadcast on a connection of its own (a connection is not shared
        between threads)."""
        with self._app.connection_for_read() as conn:
            inspect = self._app.control.inspect(
                timeout=self.config.inspect_timeout, connection=conn
            )
            return getattr(inspect, command)()

    def _peek_redis_arguments(self, conn: Any, match: TaskMatch) -> tuple[set[str], bool]:
        """Values of the matched argument of waiting messages, read without taking anything;
        and whether a message of a matched task could not be read."""
        channel = conn.default_channel
        client = channel.client
        found: set[str] = set()
        unreadable = False
        for key in self._redis_keys(channel):
            start = 0
            while True:
                page = client.lrange(key, start, start + _PAGE - 1)
                for raw in page:
                    name, args, kwargs, readable = _task_call_of(raw)
                    if name not in match.tasks:
                        continue
                    if not readable:
                        unreadable = True
                        continue
                    value = match.value_of(name, args, kwargs)
                    if value is not None:
                        found.add(value)
                if len(page) < _PAGE:
                    break
                start += _PAGE
        return found, unreadable

    def _ask_workers(
        self, conn: Any, task_ids: Sequence[str]
    ) -> tuple[dict[str, TaskTrace], set[str]]:
        """One broadcast (`query_task`) answered by every live worker within inspect_timeout;
        and the workers that answered.

        No reply at all is no error: zero live workers is a real state, and then no task can be
        on a worker.
        """
        inspect = self._app.control.inspect(timeout=self.config.inspect_timeout, connection=conn)
        replies = inspect.query_task(*task_ids) or {}
        found: dict[str, TaskTrace] = {}
        for reply in replies.values():
            if not isinstance(reply, Mapping):
                continue
            for task_id, info in reply.items():
                state = info[0] if isinstance(info, list | tuple) and info else None
                trace = _WORKER_STATES.get(state) if isinstance(state, str) else None
                # "ready" means the worker just finished it; the result backend will say so.
                if trace is not None and found.get(task_id) != TaskTrace.ACTIVE:
                    found[task_id] = trace
        return found, set(replies)

    def _redis_keys(self, channel: Any) -> list[str]:
        """The Redis list keys of the configured queues, priority lists included.

        kombu's Redis transport keeps a queue as one list per priority step: `queue` for the
        lowest step and `queue<sep><step>` for the others (sep is "\\x06\\x16" by default).
        """
        prefix = getattr(channel, "global_keyprefix", "") or ""
        steps = sorted({channel.priority(p) for p in channel.priority_steps})
        keys = []
        for queue in self.config.queues:
            for step in steps:
                keys.append(f"{prefix}{queue}{channel.sep}{step}" if step else f"{prefix}{queue}")
        return keys

    def _peek_redis(self, conn: Any, wanted: set[str]) -> set[str]:
        """The wanted task ids that sit in a configured queue, read without taking anything."""
        channel = conn.default_channel
        client = channel.client
        found: set[str] = set()
        for key in self._redis_keys(channel):
            start = 0
            while found != wanted:
                page = client.lrange(key, start, start + _PAGE - 1)
                for raw in page:
                    task_id = _task_id_of(raw)
                    if task_id in wanted:
                        found.add(task_id)
                if len(page) < _PAGE:
                    break
                start += _PAGE
        return found

    def _queues_empty(self, conn: Any) -> bool:
        """For brokers we cannot read without consuming (AMQP): are all configured queues empty?

        A passive declare only reads the message count; a queue that does not exist is empty.
        """
        for queue in self.config.queues:
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(queue=queue, passive=True)
            except self._channel_errors:
                count = 0  # NOT_FOUND: no such queue, so nothing waits in it
            finally:
                with contextlib.suppress(*self._channel_errors):
                    channel.close()  # may already be closed by the broker after NOT_FOUND
            if count:
                return False
        return True

    def _finished(self, task_ids: Sequence[str]) -> set[str]:
        """The ids the result backend reports as SUCCESS, FAILURE or REVOKED."""
        backend = self._app.backend
        if not task_ids or isinstance(backend, DisabledBackend):
            return set()
        errors = (
            KombuError,
            OSError,
            RedisError,
            *getattr(backend, "connection_errors", ()),
            *getattr(backend, "channel_errors", ()),
        )
        try:
            # Redis, memcached, … derive from the base class and implement mget: one round trip
            # a page of ids instead of one a task.
            if isinstance(backend, BaseKeyValueStoreBackend) and _has_mget(backend):
                statuses = self._statuses_by_mget(backend, task_ids)
            else:
                statuses = {t: backend.get_task_meta(t).get("status") for t in task_ids}
        except errors as exc:
            raise CheckUnknown(
                f"celery cluster {self.name!r}: result backend unreachable: "
                f"{self.config.scrub(str(exc)) or type(exc).__name__}"
            ) from None
        return {t for t, status in statuses.items() if status in _FINISHED_STATES}

    @staticmethod
    def _statuses_by_mget(backend: Any, task_ids: Sequence[str]) -> dict[str, Any]:
        statuses: dict[str, Any] = {}
        for i in range(0, len(task_ids), _PAGE):
            chunk = task_ids[i : i + _PAGE]
            keys = [backend.get_key_for_task(t) for t in chunk]
            values = backend.mget(keys)
            if isinstance(values, Mapping):  # some key-value backends answer with a dict
                values = [values.get(k) for k in keys]
            for task_id, value in zip(chunk, values, strict=True):
                # decode, not decode_result: the status is all we need, and rebuilding a stored
                # exception could import arbitrary classes.
                meta = backend.decode(value) if value is not None else None
                statuses[task_id] = meta.get("status") if isinstance(meta, Mapping) else None
        return statuses


@dataclass(frozen=True)
class TaskMatch:
    """Which tasks a row's value identifies, and by which argument: `position` (0-based, in
    the positional arguments) or `keyword`, whichever the call used."""

    tasks: frozenset[str]
    position: int | None = None
    keyword: str | None = None

    def value_of(self, name: object, args: object, kwargs: object) -> str | None:
        """The matched argument of one call, as text (a row's 5 and a message's "5" match)."""
        if name not in self.tasks:
            return None
        value: object = None
        if self.keyword is not None and isinstance(kwargs, Mapping) and self.keyword in kwargs:
            value = kwargs[self.keyword]
        elif (
            self.position is not None
            and isinstance(args, list | tuple)
            and 0 <= self.position < len(args)
        ):
            value = args[self.position]
        return None if value is None else str(value)


def _task_call_of(raw: bytes | str) -> tuple[str | None, object, object, bool]:
    """(task name, args, kwargs, readable) of one kombu Redis message, protocol 2 or 1.

    Only JSON bodies are read: a pickled body is never unpickled (it could run code), so its
    arguments are unreadable.
    """
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None, None, False
    if not isinstance(message, dict):
        return None, None, None, False
    raw_headers, raw_properties = message.get("headers"), message.get("properties")
    headers: dict[str, Any] = raw_headers if isinstance(raw_headers, dict) else {}
    properties: dict[str, Any] = raw_properties if isinstance(raw_properties, dict) else {}
    body: object = message.get("body")
    try:
        if properties.get("body_encoding") == "base64" and isinstance(body, str):
            body = base64.b64decode(body)
        if "json" not in str(message.get("content-type", "")):
            name = headers.get("task")
            return (name if isinstance(name, str) else None), None, None, False
        body = json.loads(body) if isinstance(body, bytes | str) else body
    except (ValueError, binascii.Error, UnicodeDecodeError):
        name = headers.get("task")
        return (name if isinstance(name, str) else None), None, None, False
    if isinstance(headers.get("task"), str):  # protocol 2: body is [args, kwargs, embed]
        if isinstance(body, list) and len(body) >= 2:
            return headers["task"], body[0], body[1], True
        return headers["task"], None, None, False
    if isinstance(body, dict) and isinstance(body.get("task"), str):  # protocol 1
        return body["task"], body.get("args"), body.get("kwargs"), True
    return None, None, None, False


def _has_mget(backend: Any) -> bool:
    return type(backend).mget is not BaseKeyValueStoreBackend.mget


def _task_id_of(raw: bytes | str) -> str | None:
    """The task id of one kombu Redis message (protocol 2 `headers.id`, or the
    `correlation_id` every Celery message carries)."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict):
        return None
    headers, properties = message.get("headers"), message.get("properties")
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(task_id, str) and isinstance(properties, dict):
        task_id = properties.get("correlation_id")
    return task_id if isinstance(task_id, str) else None
