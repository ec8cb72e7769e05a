"""The JSON API over the journal: list and show actions, approve and cancel them.

`GET /api/actions` filters by `state` (repeatable or comma-separated), `rule`, `since` (a
duration such as `24h` or an RFC 3339 time) and pages with `limit` and the opaque `cursor`
returned as `next`. Approval must name the plan hash the approver saw: a plan that differs is
refused with 409, as is approving or cancelling an action whose state does not allow it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from psycopg import AsyncConnection

from exporter.base.types import parse_duration
from healer import appkeys
from healer.actions import STATES, ActionConflict, ActionNotFound, get_action, list_actions
from healer.actions import approve as approve_action
from healer.actions import cancel as cancel_action
from healer.actions import resume as resume_action
from healer.auth import identity_of, requires
from healer.errors import JournalUnavailable
from healer.journal.pool import journal_errors
from healer.url_numbers import parse_number

__all__ = ["parse_since", "routes", "setup"]

MAX_LIMIT = 500


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`24h` (that long ago) or an RFC 3339 time with a zone; ValueError otherwise."""
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("expected a duration such as 24h or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError("an RFC 3339 time needs a zone, for example 2024-05-01T12:00:00Z")
    return moment


def _action_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    action_id = parse_number(raw)
    if action_id is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no action {raw!r}"}), content_type="application/json"
        )
    return action_id


def _storable(value: str) -> bool:
    """A text the journal accepts as a parameter (no NUL, valid UTF-8)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def list_handler(request: web.Request) -> web.Response:
    query = request.query
    if not all(_storable(v) for v in query.values()):
        return _error(400, "query parameters may not contain NUL characters or invalid Unicode")
    states = [s for v in query.getall("state", []) for s in v.split(",") if s]
    bad = [s for s in states if s not in STATES]
    if bad:
        return _error(400, f"state {bad[0]!r} is not one of {', '.join(STATES)}")
    since = None
    if "since" in query:
        try:
            since = parse_since(query["since"])
        except ValueError as exc:
            return _error(400, f"since: {exc}")
    limit = parse_number(query.get("limit", "50"), MAX_LIMIT)
    if not limit:  # None, or 0
        return _error(400, f"limit must be a number from 1 to {MAX_LIMIT}")
    cursor = query.get("cursor")
    if cursor is not None and parse_number(cursor) is None:
        return _error(400, "cursor is not one this API returned")
    try:
        with journal_errors():
            async with request.app[appkeys.JOURNAL_POOL].connection() as conn:
                items, nxt = await list_actions(
                    conn,
                    states=states or None,
                    rule=query.get("rule") or None,
                    since=since,
                    before=int(cursor) if cursor else None,
                    limit=limit,
                )
    except JournalUnavailable:
        return _error(503, "journal unavailable")
    return web.json_response({"items": items, "next": nxt})


async def show_handler(request: web.Request) -> web.Response:
    action_id = _action_id(request)
    try:
        with journal_errors():
            async with request.app[appkeys.JOURNAL_POOL].connection() as conn:
                action = await get_action(conn, action_id)
    except ActionNotFound:
        return _error(404, f"no action {action_id}")
    except JournalUnavailable:
        return _error(503, "journal unavailable")
    return web.json_response(action)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    body = await request.read()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@requires("approve")
async def approve_handler(request: web.Request) -> web.Response:
    action_id = _action_id(request)
    data = await _json_object(request)
    if data is None:
        return _error(400, 'expected a JSON object such as {"plan_hash": "..."}')
    plan_hash = data.get("plan_hash")
    if not isinstance(plan_hash, str) or not plan_hash:
        return _error(400, "plan_hash is required: the hash of the plan you reviewed")
    return await _steer(
        request,
        action_id,
        lambda conn, actor: approve_action(conn, action_id, plan_hash, actor),
    )


@requires("approve")
async def cancel_handler(request: web.Request) -> web.Response:
    action_id = _action_id(request)
    return await _steer(
        request, action_id, lambda conn, actor: cancel_action(conn, action_id, actor)
    )


@requires("approve")
async def resume_handler(request: web.Request) -> web.Response:
    action_id = _action_id(request)
    return await _steer(
        request, action_id, lambda conn, actor: resume_action(conn, action_id, actor)
    )


async def _steer(
    request: web.Request,
    action_id: int,
    change: Callable[[AsyncConnection[Any], str], Awaitable[dict[str, Any]]],
) -> web.Response:
    """A change a person makes to an action (approve, cancel, resume), in their name: 404 for
    no such action, 409 when its state does not allow it, 503 without the journal."""
    try:
        with journal_errors():
            async with request.app[appkeys.JOURNAL_POOL].connection() as conn:
                out = await change(conn, identity_of(request))
    except ActionNotFound:
        return _error(404, f"no action {action_id}")
    except ActionConflict as exc:
        return _error(409, str(exc))
    except JournalUnavailable:
        return _error(503, "journal unavailable")
    return web.json_response(out, status=202 if out.get("cancel_requested") else 200)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/actions", list_handler),
        web.get("/api/actions/{id:[0-9]+}", show_handler),
        web.post("/api/actions/{id:[0-9]+}/approve", approve_handler),
        web.post("/api/actions/{id:[0-9]+}/cancel", cancel_handler),
        web.post("/api/actions/{id:[0-9]+}/resume", resume_handler),
    ]


def setup(app: web.Application) -> None:
    app.add_routes(routes())
