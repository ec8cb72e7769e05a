"""POST /alerts: Alertmanager's webhook receiver, answering 200 once the journal committed.

A 5xx means only "not recorded, send again": the journal was unreachable (503) or the healer is
shutting down (503). Client mistakes are 4xx and never reach the journal. A remediation that
fails later is recorded as failed; the webhook already answered 200 and Alertmanager does not
resend.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from healer import appkeys
from healer.auth import requires
from healer.config import HealerSettings
from healer.errors import JournalUnavailable
from healer.ingest import Prepared, json_text, prepare, record
from healer.rules import RuleSet
from healer.webhook import BadPayload, UnsupportedVersion, parse_notification

__all__ = ["post_alerts", "read_body"]

log = logging.getLogger(__name__)


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
    notification, raw = parse_notification(body)
    return prepare(notification, raw, rules, settings)


@requires("post_alerts")
async def post_alerts(request: web.Request) -> web.Response:
    """Alertmanager's webhook receiver (version 4)."""
    app = request.app
    if app[appkeys.DRAINING].is_set():
        return _error(503, "the healer is shutting down; send again")
    settings: HealerSettings = app[appkeys.CONFIG].healer
    body = await read_body(request, settings.max_body)
    if body is None:
        return _error(413, f"body larger than healer.max_body ({settings.max_body} bytes)")
    try:
        prepared = _prepare(body, app[appkeys.RULES], settings)
    except BadPayload as exc:
        return _error(400, exc.message, path=exc.path)
    except UnsupportedVersion as exc:
        return _error(422, str(exc))
    del body  # nor is the body kept while the request waits for the journal
    try:
        result = await record(app[appkeys.INGEST_WRITER], prepared, app[appkeys.METRICS])
    except JournalUnavailable as exc:
        log.warning("alert not recorded: %s", exc)
        return _error(503, "journal unavailable: nothing was recorded; send again")
    return web.json_response(result.as_json(), dumps=json_text)
