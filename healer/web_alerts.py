"""POST /alerts: Alertmanager's webhook receiver, answering 200 once the journal committed.

A 5xx means only "not recorded, send again": the journal was unreachable (503), the healer is
shutting down (503) or already has `healer.limits.requests_in_flight` notifications in hand
(503 with Retry-After). Client mistakes are 4xx and never reach the journal; a notification
over one of `healer.limits` is 413 or 422 naming the limit. A large body is parsed and its plans
rendered in a worker thread, so it cannot hold up the event loop (and every other request).
A remediation that fails later is recorded as failed; the webhook already answered 200 and
Alertmanager does not resend.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from healer import appkeys
from healer.auth import requires
from healer.config import HealerSettings
from healer.errors import JournalUnavailable
from healer.ingest import Prepared, json_text, prepare, record
from healer.rules import RuleSet
from healer.webhook import (
    BadPayload,
    OverLimit,
    PayloadLimits,
    UnsupportedVersion,
    parse_notification,
)

__all__ = ["IN_FLIGHT", "post_alerts", "read_body"]

log = logging.getLogger(__name__)

# POST /alerts requests in hand right now (a one-element list: the app is frozen once running).
IN_FLIGHT: web.AppKey[list[int]] = web.AppKey("alerts_in_flight", list)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (declared or actually sent)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(body: bytes, rules: RuleSet, settings: HealerSettings) -> Prepared:
    """Parse and prepare in a frame of their own: what they build is not kept (Prepared)."""
    lim = settings.limits
    limits = PayloadLimits(lim.alerts_per_notification, lim.labels_per_alert, lim.label_value)
    notification, raw = parse_notification(body, limits)
    return prepare(notification, raw, rules, settings)


@requires("post_alerts")
async def post_alerts(request: web.Request) -> web.Response:
    """Alertmanager's webhook receiver (version 4)."""
    app = request.app
    if app[appkeys.DRAINING].is_set():
        return _error(503, "the healer is shutting down; send again")
    settings: HealerSettings = app[appkeys.CONFIG].healer
    in_flight = app[IN_FLIGHT]
    if in_flight[0] >= settings.limits.requests_in_flight:
        response = _error(
            503,
            "too many notifications in hand; send again",
            limit="healer.limits.requests_in_flight",
            max=settings.limits.requests_in_flight,
        )
        response.headers["Retry-After"] = "1"
        return response
    in_flight[0] += 1  # no await since the check: the count cannot be passed
    try:
        return await _receive(request, settings)
    finally:
        in_flight[0] -= 1


async def _receive(request: web.Request, settings: HealerSettings) -> web.Response:
    app = request.app
    body = await read_body(request, settings.max_body)
    if body is None:
        return _error(
            413,
            f"body larger than healer.max_body ({settings.max_body} bytes)",
            limit="healer.max_body",
            max=settings.max_body,
        )
    try:
        if len(body) > settings.limits.parse_in_thread_above:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                None, _prepare, body, app[appkeys.RULES], settings
            )
        else:
            prepared = _prepare(body, app[appkeys.RULES], settings)
    except BadPayload as exc:
        return _error(400, exc.message, path=exc.path)
    except OverLimit as exc:
        return _error(exc.status, exc.message, path=exc.path, limit=exc.limit, max=exc.maximum)
    except UnsupportedVersion as exc:
        return _error(422, str(exc))
    del body  # nor is the body kept while the request waits for the journal
    try:
        result = await record(app[appkeys.INGEST_WRITER], prepared, app[appkeys.METRICS])
    except JournalUnavailable as exc:
        log.warning("alert not recorded: %s", exc)
        return _error(503, "journal unavailable: nothing was recorded; send again")
    return web.json_response(result.as_json(), dumps=json_text)
