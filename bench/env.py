"""The services a benchmark run starts and gives back: PostgreSQL databases, a Redis database,
Celery workers and subprocesses. They come from tests/services.py, the same helpers as the
tests (the machine's own PostgreSQL and Redis where reachable, embedded ones otherwise).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType

from bench.harness import RESULTS, Proc, log
from tests.services import PostgresServer, RedisTarget, Worker, reserve_redis, start_worker


class BenchEnv:
    """Everything started through it is stopped or dropped by `close()` (or `with`)."""

    def __init__(self) -> None:
        self.workdir = RESULTS / "logs" / time.strftime("%Y%m%d-%H%M%S")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self._pg: PostgresServer | None = None
        self._redis: RedisTarget | None = None

    @property
    def pg(self) -> PostgresServer:
        if self._pg is None:
            self._pg = PostgresServer()
            self._stack.callback(self._pg.close)
            log(f"PostgreSQL: {'embedded pgserver' if self._pg.embedded else 'local server'}")
        return self._pg

    def database(self) -> str:
        """A fresh, empty database; dropped at the end of the run."""
        name, dsn = self.pg.create_database()
        self._stack.callback(self.pg.drop_database, name)
        return dsn

    @property
    def redis(self) -> RedisTarget:
        if self._redis is None:
            target, shutdown = reserve_redis()
            self._stack.callback(shutdown)
            self._stack.callback(target.close)
            self._redis = target
        return self._redis

    def worker(self, *, concurrency: int = 2, name: str | None = None) -> Worker:
        w = start_worker(self.redis.url, self.workdir, concurrency=concurrency, name=name)
        self._stack.callback(w.stop)
        return w

    def proc(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(argv, self.workdir / f"{name}.log", env=env)
        self._stack.callback(p.stop)
        return p

    def adopt(self, proc: Proc) -> Proc:
        """Stop `proc` with everything else at the end of the run."""
        self._stack.callback(proc.stop)
        return proc

    def path(self, name: str) -> Path:
        return self.workdir / name

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> BenchEnv:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
