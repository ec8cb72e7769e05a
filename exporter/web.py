"""The exporter's HTTP side: `/metrics`, a landing page at `/`, and `/healthz`.

Every handler reads what the background collection already knows; none waits on a database or
a broker. `/metrics` speaks the Prometheus text format, or OpenMetrics when the scraper's
`Accept` header asks for it (prometheus_client's own negotiation).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web
from jinja2.sandbox import SandboxedEnvironment
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.base import __version__
from exporter.base.types import format_duration, split_listen
from exporter.collector import ExporterCollector
from exporter.config import Config
from exporter.runner import Runner

__all__ = ["REGISTRY", "RUNNER", "create_app", "serve"]

log = logging.getLogger(__name__)

RUNNER = web.AppKey("taskmedic_runner", Runner)
REGISTRY = web.AppKey("taskmedic_registry", CollectorRegistry)

_env = SandboxedEnvironment(autoescape=True)
_PAGE = _env.from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>taskmedic exporter</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
td{overflow-wrap:break-word}
.up{color:#070}.down{color:#b00}.pending{color:#777}
td.err{min-width:12rem;max-width:40rem;font-family:monospace;font-size:.9em}
@media (max-width:40rem){body{margin:.75rem}h1{font-size:1.4rem}th,td{padding:.25rem .4rem}}
</style></head><body>
<h1>taskmedic exporter {{ version }}</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a>
&middot; page rendered {{ now }}</p>
<h2>Checks</h2>
<table><thead><tr><th>check</th><th>type</th><th>database</th><th>interval</th>
<th>state</th><th>findings</th><th>last success</th><th>duration</th><th>last error</th>
</tr></thead><tbody>
{% for c in checks %}<tr>
<td title="{{ c.help or '' }}">{{ c.name }}</td><td>{{ c.type }}</td><td>{{ c.database }}</td>
<td>{{ c.interval }}</td><td class="{{ c.css }}">{{ c.state }}</td><td>{{ c.findings }}</td>
<td>{{ c.last_success }}</td><td>{{ c.duration }}</td><td class="err">{{ c.error }}</td>
</tr>{% else %}<tr><td colspan="9">no checks configured</td></tr>{% endfor %}
</tbody></table>
<h2>Celery clusters</h2>
<table><thead><tr><th>cluster</th><th>broker</th><th>workers online</th>
<th>workers offline</th><th>killed workers seen by</th><th>task events</th></tr></thead><tbody>
{% for c in clusters %}<tr><td>{{ c.name }}</td>
<td class="{{ 'up' if c.broker_up else 'down' }}">{{ 'up' if c.broker_up else 'down' }}</td>
{% if c.broker_up %}<td>{{ c.online|join(', ') }}</td><td>{{ c.offline|join(', ') }}</td>
{% else %}<td colspan="2">unknown while the broker cannot be reached</td>{% endif %}
<td>{{ c.method }}</td>
<td class="{{ 'up' if c.task_events else 'down' }}">{% if c.task_events %}{{ c.task_events }}
received{% else %}none received: workers send no task events (start them with -E, or set
enable_events: true for this cluster){% endif %}</td></tr>
{% else %}<tr><td colspan="6">no clusters configured</td></tr>{% endfor %}
</tbody></table>
{% if tasks %}<h2>Periodic tasks</h2>
<table><thead><tr><th>cluster</th><th>task</th><th>expected every</th><th>last succeeded</th>
<th>last failed</th><th>state</th></tr></thead><tbody>
{% for t in tasks %}<tr><td>{{ t.cluster }}</td><td>{{ t.name }}</td><td>{{ t.every }}</td>
<td>{{ t.succeeded }}</td><td>{{ t.failed }}</td>
<td class="{{ t.css }}">{{ t.state }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
</body></html>
"""
)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class PageCache:
    """The encoded `/metrics` page, rendered again only when what it shows can have changed.

    A page changes when a check finishes a collection, or when a Celery worker's liveness or
    heartbeat changes (liveness is judged at scrape time, so the key takes a fresh snapshot).
    Between those, scrapes get the same bytes (and the same gzip) without rendering hundreds of
    samples each time.
    """

    def __init__(self, runner: Runner, registry: CollectorRegistry) -> None:
        self._runner = runner
        self._registry = registry
        self._key: tuple[object, ...] | None = None
        self._pages: dict[tuple[str, bool], bytes] = {}

    def _current_key(self) -> tuple[object, ...]:
        checks = tuple(s.collections for s in self._runner.states)
        clusters = tuple(
            (
                snap.broker_up,
                tuple((w.hostname, w.online, w.last_heartbeat) for w in snap.workers),
                snap.task_events,
                snap.liveness_method,
                tuple(snap.tasks),  # frozen dataclasses: overdue and every time compared
            )
            for snap in self._runner.clusters()
        )
        return checks, clusters

    def page(self, accept: str, gzipped: bool) -> tuple[bytes, str]:
        """The page for this `Accept` header, gzip-compressed when asked; cached per key."""
        encoder, content_type = choose_encoder(accept)
        key = self._current_key()
        if key != self._key:
            self._key, self._pages = key, {}
        body = self._pages.get((content_type, gzipped))
        if body is None:
            plain = self._pages.get((content_type, False)) or encoder(self._registry)
            self._pages[(content_type, False)] = plain
            body = gzip.compress(plain, compresslevel=6, mtime=0) if gzipped else plain
            self._pages[(content_type, gzipped)] = body
        return body, content_type


PAGES = web.AppKey("taskmedic_pages", PageCache)


async def _metrics(request: web.Request) -> web.Response:
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    body, content_type = request.app[PAGES].page(request.headers.get("Accept", ""), gzipped)
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def _landing(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    checks = []
    for s in runner.states:
        if s.up is None:
            state, css = "pending", "pending"
        elif not s.up:
            state, css = "down", "down"
        elif s.outcome is not None and not s.outcome.confirmed:
            state, css = "up (first observation)", "up"
        else:
            state, css = "up", "up"
        findings = "-"
        if s.up and s.outcome is not None and s.outcome.confirmed:
            findings = str(len(s.outcome.findings))
        checks.append(
            {
                "name": s.name,
                "type": s.type,
                "database": s.database,
                "help": s.help,
                "interval": format_duration(s.interval),
                "state": state,
                "css": css,
                "findings": findings,
                "last_success": _when(s.last_success),
                "duration": f"{s.duration * 1000:.0f} ms" if s.duration is not None else "-",
                "error": s.error or "",
            }
        )
    snaps = runner.clusters()
    clusters = [
        {
            "name": snap.cluster,
            "broker_up": snap.broker_up,
            "online": [w.hostname for w in snap.workers if w.online],
            "offline": [w.hostname for w in snap.workers if not w.online],
            "task_events": snap.task_events,
            "method": snap.liveness_method,
        }
        for snap in snaps
    ]
    tasks = [
        {
            "cluster": snap.cluster,
            "name": t.name,
            "every": f"{format_duration(t.expect_every)} (+{format_duration(t.grace)} grace)",
            "succeeded": _when(t.last_succeeded),
            "failed": _when(t.last_failed),
            "state": "overdue" if t.overdue else "on time",
            "css": "down" if t.overdue else "up",
        }
        for snap in snaps
        for t in snap.tasks
    ]
    html = _PAGE.render(
        version=__version__,
        now=_when(time.time()),
        checks=checks,
        clusters=clusters,
        tasks=tasks,
    )
    return web.Response(text=html, content_type="text/html")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_app(config: Config, *, runner: Runner | None = None) -> web.Application:
    """The exporter's aiohttp application; the runner starts and stops with the app."""
    app = web.Application()
    app[RUNNER] = runner or Runner(config)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(app[RUNNER]))
    app[REGISTRY] = registry
    app[PAGES] = PageCache(app[RUNNER], registry)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _landing)
    app.router.add_get("/healthz", _healthz)

    async def run_collection(app: web.Application) -> AsyncIterator[None]:
        await app[RUNNER].start()
        yield
        await app[RUNNER].stop()

    app.cleanup_ctx.append(run_collection)
    return app


async def serve(config: Config) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly; returns the exit code."""
    host, port = split_listen(config.exporter.listen)
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            # An expected failure with its reason; a traceback would only bury it.
            log.error(  # noqa: TRY400
                "cannot listen on %s: %s: set exporter.listen in the config to a free host:port",
                config.exporter.listen,
                exc.strerror or exc,
            )
            return 2
        log.info(
            "taskmedic exporter %s on http://%s/metrics (%d checks, %d clusters)",
            __version__,
            config.exporter.listen,
            len(config.checks),
            len(config.celery),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("taskmedic exporter stopping")
    finally:
        await runner.cleanup()
    return 0
