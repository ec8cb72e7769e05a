"""Shared by the Celery monitor tests: a monitor factory and a TCP link that can be cut."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from exporter.base.connections import CeleryConfig
from exporter.celery_state import ClusterMonitor, WorkerStatus
from exporter.config import Config, PeriodicTask
from healer.plan import CelerySpec, PlanStep
from tests.services import RedisTarget, free_port


def status_of(
    monitor: ClusterMonitor, hostname: str, now: float | None = None
) -> WorkerStatus | None:
    """The monitor's view of one worker, or None when it does not list it."""
    for worker in monitor.snapshot(now).workers:
        if worker.hostname == hostname:
            return worker
    return None


class TcpLink:
    """A real TCP hop in front of a broker: `cut()` drops the listener and every open
    connection (what a monitor sees when the broker host goes away), `restore()` listens on
    the same port again, `drop()` closes the open connections only (a reconnect succeeds at
    once), `freeze()` holds the connections open but silent (a hung broker or a network
    stall). A monitor or a worker goes through it; the others talk to the broker directly.
    """

    def __init__(
        self, connect_upstream: Callable[[], socket.socket], *, bind: str = "127.0.0.1"
    ) -> None:
        self._connect_upstream = connect_upstream
        self.bind = bind
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._frozen = threading.Event()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.bind, self.port))
        listener.listen(16)
        self._listener = listener
        self._spawn(self._accept, listener)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for s in [listener, *sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        for t in self._threads:
            t.join(5)
        self._threads = []

    def drop(self) -> None:
        """Close every open connection but keep listening: a blip after which a reconnect
        succeeds at once."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = self._connect_upstream()
            with self._lock:
                if self._listener is None:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)

    def freeze(self) -> None:
        """Keep every connection open but pass nothing on: a broker that hangs."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            while True:
                if self._frozen.is_set():
                    time.sleep(0.05)
                    if a.fileno() < 0 or b.fileno() < 0:
                        return
                    continue
                for key, _ in sel.select(timeout=0.5):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                        if not data:
                            raise OSError("closed")  # noqa: TRY301 - one path for both ends
                        peer[src].sendall(data)
                    except OSError:
                        for s in (a, b):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)
                        return
                if a.fileno() < 0 or b.fileno() < 0:
                    return


def redis_link(redis_target: RedisTarget) -> TcpLink:
    """A TcpLink in front of this run's Redis (TCP or the embedded server's unix socket),
    listening; `cut()` it at the end."""

    def upstream() -> socket.socket:
        if redis_target.socket_path:
            s = socket.socket(socket.AF_UNIX)
            s.connect(redis_target.socket_path)
            return s
        host_port = redis_target.url.split("://", 1)[1].split("@")[-1].split("/")[0]
        host, port = host_port.rsplit(":", 1)
        return socket.create_connection((host, int(port)))

    link = TcpLink(upstream)
    link.restore()
    return link


class Monitors:
    """Starts ClusterMonitors for a test and stops every one of them afterwards."""

    def __init__(self) -> None:
        self._started: list[ClusterMonitor] = []

    def __call__(
        self,
        broker: str,
        *,
        backend: str | None = None,
        queues: tuple[str, ...] = ("celery",),
        purge_offline_after: float = 300.0,
        forget_crashed_after: float | None = None,
        inspect_timeout: float = 0.5,
        tasks: dict[str, dict[str, float]] | None = None,
        enable_events: bool = False,
    ) -> ClusterMonitor:
        config = CeleryConfig.model_validate(
            {
                "broker": broker,
                "backend": backend,
                "queues": list(queues),
                "inspect_timeout": inspect_timeout,
                "purge_offline_after": purge_offline_after,
                "forget_crashed_after": forget_crashed_after,
                "enable_events": enable_events,
            }
        )
        periodic = [
            PeriodicTask.model_validate({"cluster": "main", "task": name, **expectation})
            for name, expectation in (tasks or {}).items()
        ]
        monitor = ClusterMonitor("main", config, periodic)
        monitor.start()
        self._started.append(monitor)
        return monitor

    def stop_all(self) -> None:
        for monitor in self._started:
            monitor.stop()
        prefixes = ("taskmedic-events-", "taskmedic-presence-")
        left = [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]
        assert not left, f"monitor threads still running after stop(): {left}"


def celery_config(broker_url: str) -> Config:
    """A config with one cluster, `main`, on `broker_url` (broker and result backend)."""
    return Config.model_validate(
        {"celery": {"main": {"broker": broker_url, "backend": broker_url}}}
    )


def task(name: str, *args: Any, wait: float | None = None, app: str = "main") -> PlanStep:
    """A plan's `celery` step sending task `name` with `args`."""
    return PlanStep(
        name=name,
        kind="celery",
        celery=CelerySpec(app=app, task=name, args=list(args), wait=wait),
    )
