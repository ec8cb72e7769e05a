"""Helpers of the exporter tests: configs written as real YAML files, metrics read back with
prometheus_client itself (never by matching text we produced)."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import ExporterCollector
from exporter.config import Config, load_config
from exporter.runner import Runner


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def config_from(tmp_path: Path, data: Mapping[str, Any]) -> Config:
    """Write `data` as taskmedic.yaml and load it the way the CLI does."""
    return load_config(write_config(tmp_path / "taskmedic.yaml", data))


def registry_of(runner: Runner) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(runner))
    return registry


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def pg_exec(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run SQL as the application would (autocommit), returning rows when there are any."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def mysql_exec(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    from exporter.base.connections import parse_mysql_dsn

    conn = pymysql.connect(**parse_mysql_dsn(dsn), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """The async twin of tests.services.wait_for: poll with a deadline, never sleep-and-hope."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


class FreezableLink:
    """A TCP hop to a real server that can stop passing bytes while keeping every connection
    open: what a client sees when the server host hangs (no error, no answer, ever)."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self._closed.set()
        self.flowing.set()
        for t in self._threads:
            t.join(5)
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            host, port = self._upstream
            if host.startswith("/"):  # a unix socket directory, as libpq names it
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(f"{host}/.s.PGSQL.{port}")
            else:
                upstream = socket.create_connection((host, port))
            self._sockets += [client, upstream]
            t = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(t)
            t.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            while not self._closed.is_set():
                if not self.flowing.wait(0.1):
                    continue
                for key, _ in sel.select(timeout=0.1):
                    if not self.flowing.is_set():
                        break
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                        if not data:
                            return
                        peer[src].sendall(data)
                    except OSError:
                        return
