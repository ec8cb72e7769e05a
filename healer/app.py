"""The healer's web application and how it starts and stops.

Resources live in cleanup contexts, opened in order and closed in reverse: the journal (its
DSN, an embedded server if none is configured, the schema upgrade, the pool), then the
executor. `/readyz` is false while the journal is unreachable or behind, and while a
background loop waits to start again after an error (healer.supervise).

On SIGTERM `serve` first stops taking alerts (POST /alerts and /readyz answer 503, so
Alertmanager keeps the alert and retries), lets the executor finish running steps for up to
`shutdown_grace` and release its leases, and only then closes the listener and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool

from exporter.base.errors import ConfigError
from exporter.base.types import split_listen
from healer import api, appkeys, console, log_api, openapi, retention
from healer.auth import Authenticator, auth_middleware
from healer.config import HealerConfig, check_serving_auth
from healer.errors import JournalUnavailable
from healer.executor import Executor
from healer.journal import migrate
from healer.journal.ingest_writer import IngestWriter
from healer.journal.pool import journal_dsn, journal_errors, journal_secrets, open_pool
from healer.metrics import HealerMetrics, JournalGauges
from healer.rules import RuleSet, load_rules
from healer.web_alerts import IN_FLIGHT, post_alerts

__all__ = ["EXECUTOR", "create_app", "drain", "serve"]

log = logging.getLogger(__name__)

# The running executor (healer.executor.Executor) or None when it is not available.
EXECUTOR: web.AppKey[Executor | None] = web.AppKey("executor")
_GAUGES: web.AppKey[JournalGauges] = web.AppKey("journal_gauges")
_FIXED_DSN: web.AppKey[str | None] = web.AppKey("fixed_dsn")
_RUN_EXECUTOR = web.AppKey("run_executor", bool)
_READINESS: web.AppKey[Readiness] = web.AppKey("readiness")


async def _journal_ctx(app: web.Application) -> AsyncIterator[None]:
    config: HealerConfig = app[appkeys.CONFIG]
    fixed = app[_FIXED_DSN]
    async with contextlib.AsyncExitStack() as stack:
        dsn = fixed if fixed is not None else await stack.enter_async_context(journal_dsn(config))
        timeout = config.healer.journal.connect_timeout if config.healer.journal else 5.0
        # Unreachable at start: the command says why and exits 2 (healer.cli), no traceback.
        with journal_errors(secrets=journal_secrets(config)):
            await migrate.upgrade(dsn)
        pool = await open_pool(
            dsn, max_size=max(4, config.healer.executor_concurrency + 4), wait_timeout=timeout
        )
        writer = IngestWriter(pool, metrics=app[appkeys.METRICS])
        # /readyz has a connection of its own: health checks never wait for, nor take, one
        # that ingest needs.
        ready_pool = await open_pool(dsn, max_size=1, wait_timeout=min(timeout, 2.0))
        app[_READINESS] = Readiness(ready_pool)
        app[appkeys.JOURNAL_DSN] = dsn
        app[appkeys.JOURNAL_POOL] = pool
        app[appkeys.INGEST_WRITER] = writer
        try:
            yield
        finally:
            await writer.close()
            await ready_pool.close()
            await pool.close()


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    if not app[_RUN_EXECUTOR]:
        app[EXECUTOR] = None
        yield
        return
    config: HealerConfig = app[appkeys.CONFIG]
    h = config.healer
    executor = Executor(
        app[appkeys.JOURNAL_DSN],
        config,
        app[appkeys.METRICS],
        concurrency=h.executor_concurrency,
        lease=h.lease,
        dry_run=h.dry_run,
        output_cap=h.output_cap,
        approval_timeout=h.approval_timeout,
        agents=config.agents,
    )
    await executor.start()
    app[EXECUTOR] = executor
    try:
        yield
    finally:
        await drain(app)


async def drain(app: web.Application) -> None:
    """Stop taking alerts, then stop the executor within shutdown_grace (once)."""
    app[appkeys.DRAINING].set()
    executor = app.get(EXECUTOR)
    if executor is not None:  # Executor.stop is idempotent: the second call returns at once
        await executor.stop(app[appkeys.CONFIG].healer.shutdown_grace)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


READY_TTL = 1.0


class Readiness:
    """/readyz's journal answer: asked at most once per READY_TTL, by one request at a time,
    on a pool of one connection, so a flood of health checks costs the journal one round trip
    a second and can never starve ingest of connections."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._lock = asyncio.Lock()
        self._at = -READY_TTL
        self._answer: tuple[int, dict[str, Any]] = (503, {})

    async def journal(self) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._at >= READY_TTL:
                self._answer = await self._ask()
                self._at = loop.time()
            return self._answer

    async def _ask(self) -> tuple[int, dict[str, Any]]:
        try:
            with journal_errors():
                async with self._pool.connection() as conn:
                    version = await migrate.current_version(conn)
        except JournalUnavailable as exc:
            return 503, {"ready": False, "reason": str(exc)}
        if version != migrate.latest_version():
            return 503, {
                "ready": False,
                "reason": f"journal schema {version}, expected "
                f"{migrate.latest_version()}: run taskmedic db upgrade",
            }
        return 200, {"ready": True, "schema": version}


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[appkeys.DRAINING].is_set():
        return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
    down = app[appkeys.METRICS].loops.down()
    if down:
        reason = "; ".join(f"loop {name} failed ({error})" for name, error in sorted(down.items()))
        return web.json_response({"ready": False, "reason": reason}, status=503)
    status, body = await app[_READINESS].journal()
    return web.json_response(body, status=status)


async def metrics_handler(request: web.Request) -> web.Response:
    await request.app[_GAUGES].refresh()
    body = generate_latest(request.app[appkeys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    config: HealerConfig,
    *,
    rules: RuleSet | None = None,
    metrics: HealerMetrics | None = None,
    dsn: str | None = None,
    run_executor: bool = True,
    listen: str | None = None,
) -> web.Application:
    """The healer's application; raises ConfigError for rules or an unsafe auth setup.

    `dsn` overrides the configured journal (tests); `run_executor=False` only records.
    """
    check_serving_auth(config, listen)
    metrics = metrics or HealerMetrics()
    auth = Authenticator(config.healer.auth, metrics)
    app = web.Application()
    app.middlewares.append(auth_middleware(auth, lambda: app.get(appkeys.JOURNAL_POOL)))
    app[appkeys.CONFIG] = config
    app[appkeys.AUTH] = auth
    app[appkeys.RULES] = rules if rules is not None else load_rules(config)
    app[appkeys.METRICS] = metrics
    app[appkeys.DRAINING] = asyncio.Event()
    app[_FIXED_DSN] = dsn
    app[_RUN_EXECUTOR] = run_executor
    app[IN_FLIGHT] = [0]
    gauges = JournalGauges(
        app[appkeys.METRICS], lambda: app[appkeys.RULES], lambda: app[appkeys.JOURNAL_POOL]
    )
    app[_GAUGES] = gauges
    app[appkeys.METRICS].registry.register(gauges)
    app.cleanup_ctx.append(_journal_ctx)
    app.cleanup_ctx.append(_executor_ctx)
    app.add_routes(
        [
            web.post("/alerts", post_alerts),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_handler),
        ]
    )
    api.setup(app)
    openapi.setup(app)
    log_api.setup(app)
    retention.setup(app)  # the hourly log prune runs wherever the log is served
    console.setup(app)
    return app


LISTEN_BACKLOG = 4096


def _raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard limit, as Go programs (Alertmanager,
    Prometheus) do: every connection of a storm is a file, and the usual soft limit of 1024
    would refuse them long before the listen queue fills. The hard limit stays as it is."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses a soft limit above fs.nr_open (1,048,576 unless changed).
    want = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, want, exc)


# Young-generation collections every 10,000 net allocations instead of 700, and a full one
# after 100 of the middle generation's instead of 10.
GC_THRESHOLDS = (10_000, 50, 100)


def _tune_gc() -> None:
    """Collect less often, and never again walk what was built at start.

    A storm from Alertmanager keeps thousands of requests in flight, each with its payload,
    plan and task, and Python's default thresholds then run a collection every few requests,
    each walking everything still alive (the rules, the app, every pending request), so the
    collector rather than the work sets the cost of an alert. `gc.freeze()` moves what
    exists at start (config, compiled rules, the app) out of every later collection. Cycles
    are still collected, in fewer and larger passes, so memory stays bounded by the requests
    in flight, as it does with the default thresholds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: HealerConfig, *, listen: str | None = None) -> int:
    """Run the healer until SIGTERM or SIGINT; drain, then return the exit code 0."""
    address = listen or config.healer.listen
    _raise_open_files_limit()
    app = create_app(config, listen=address)
    _tune_gc()
    # In-flight requests get a few seconds once the listener closes: alerts were refused
    # while draining, and a log follower reconnects to another replica.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    host, port = split_listen(address)
    # Alertmanager sends each aggregation group's notification on its own goroutine, over a
    # client with no limit of connections per host: a storm opens hundreds of connections at
    # once. aiohttp's default accept backlog (128) overflows then: the kernel drops the
    # handshakes it cannot queue and resets some of those connections, and Alertmanager
    # counts failed notifications and retries them with backoff.
    # The kernel caps this at net.core.somaxconn.
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        option = "--listen" if listen else "healer.listen"
        raise ConfigError(
            [
                config.problem(
                    ("healer", "listen"),
                    f"cannot listen on {address}: {exc.strerror or exc}: set {option} to a "
                    "free host:port",
                )
            ]
        ) from None
    log.info("healer listening on http://%s (%d rules)", address, len(app[appkeys.RULES]))
    if not len(app[appkeys.RULES]):
        log.warning("no rules loaded (healer.rules): alerts are recorded but start nothing")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: no new alerts; letting running steps finish")
        await drain(app)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("healer stopped")
    return 0
