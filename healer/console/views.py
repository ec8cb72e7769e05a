"""The console's pages: the list of recent actions and one action with its live log.

Both read the journal through `healer.journal.console` and are rendered on the server;
`?fragment=…` returns just the part the page's script refreshes every few seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from healer import appkeys
from healer.auth import public, roles_of
from healer.console.render import FINAL, STATES, render
from healer.console.session import console_page, csrf_token, has_session
from healer.errors import JournalUnavailable
from healer.journal import console as journal_console
from healer.journal.pool import journal_errors
from healer.url_numbers import parse_number

__all__ = ["action_page", "index", "static_file"]

PAGE = 50
Conn = AsyncConnection[Any]
T = TypeVar("T")
CANCELLABLE = frozenset({"pending", "awaiting_approval", "running"})


async def _read(pool: AsyncConnectionPool[Any], read: Callable[[Conn], Awaitable[T]]) -> T:
    """Run `read` on one connection of the pool; a journal outage is a 503 page."""
    try:
        with journal_errors("console"):
            async with pool.connection() as conn:
                return await read(conn)
    except JournalUnavailable as e:
        raise web.HTTPServiceUnavailable(text="the journal is unavailable") from e


def _page_context(request: web.Request) -> dict[str, Any]:
    return {"csrf": csrf_token(request), "logged_in": has_session(request), "login_page": False}


def _alertname(labels: Any) -> str:
    return str(labels.get("alertname", "")) if isinstance(labels, dict) else ""


@console_page
async def index(request: web.Request) -> web.Response:
    """Recent actions, newest first, filterable by state and rule; `?fragment=rows` for polls."""
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        raise web.HTTPBadRequest(text=f"state: expected one of {', '.join(STATES)}")
    rule = request.query.get("rule") or None
    if rule is not None and len(rule) > 200:
        raise web.HTTPBadRequest(text="rule: too long")
    before_s = request.query.get("before") or None
    before = parse_number(before_s) if before_s is not None else None
    if before_s is not None and before is None:
        raise web.HTTPBadRequest(text="before: expected an action id")
    pool = request.app[appkeys.JOURNAL_POOL]

    async def read(conn: Conn) -> tuple[list[dict[str, Any]], list[str]]:
        found = await journal_console.actions(
            conn, state=state, rule=rule, before=before, limit=PAGE + 1
        )
        return found, await journal_console.rules(conn)

    actions, rules = await _read(pool, read)
    more = len(actions) > PAGE
    actions = actions[:PAGE]
    for a in actions:
        a["alertname"] = _alertname(a["labels"])
    ctx = {
        "actions": actions,
        "rules": rules,
        "state": state or "",
        "rule": rule or "",
        "before": before,
        "next_before": actions[-1]["id"] if more and actions else None,
        **_page_context(request),
    }
    if request.query.get("fragment") == "rows":
        return render("_rows.html", **ctx)
    return render("index.html", **ctx)


@console_page
async def action_page(request: web.Request) -> web.Response:
    """One action: summary, approve/cancel, plan, steps, live log, audit trail."""
    id_s = request.match_info["id"]
    if len(id_s) > 18:
        raise web.HTTPNotFound(text="no such action")
    action_id = int(id_s)
    pool = request.app[appkeys.JOURNAL_POOL]
    action, steps, events = await _read(
        pool, lambda conn: journal_console.action_page(conn, action_id)
    )
    if action is None:
        raise web.HTTPNotFound(text=f"no action {action_id}")
    action["alertname"] = _alertname(action["labels"])
    plan: dict[str, Any] = action["plan"] if isinstance(action["plan"], dict) else {}
    raw_steps = plan.get("steps")
    plan_steps: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    may_approve = request.app.get(appkeys.AUTH) is None or "approve" in roles_of(request)
    # Paused between batches of a multi-host step, and nobody asked to resume it yet.
    paused = (
        action["state"] == "running"
        and action["paused_at"] is not None
        and action["resumed_by"] is None
    )
    ctx = {
        "a": action,
        "steps": steps,
        "events": events,
        "plan": plan,
        "plan_steps": plan_steps,
        "step_names": [s.get("name", "") for s in plan_steps if isinstance(s, dict)],
        "final": action["state"] in FINAL
        or (action["state"] == "interrupted" and action["finished_at"] is not None),
        # The buttons show only to someone with the approve role (the API checks it again).
        "can_approve": may_approve and action["state"] == "awaiting_approval",
        "paused": paused,
        "can_resume": may_approve and paused,
        "can_cancel": may_approve
        and action["state"] in CANCELLABLE
        and action["cancel_requested_at"] is None,
        **_page_context(request),
    }
    if request.query.get("fragment") == "detail":
        return render("_detail.html", **ctx)
    return render("action.html", **ctx)


STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file the console serves, read once at import: a request can only pick one of
    these, so no name a client sends is ever kept, opened or looked up on disk."""
    folder = resources.files("healer.console") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        ext = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and ext in STATIC_TYPES and not entry.name.startswith("."):
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[ext])
    return files


STATIC_FILES = _static_files()


@public  # the login form needs its stylesheet; these files hold no data
async def static_file(request: web.Request) -> web.Response:
    """The console's own stylesheet and script (versioned URLs, so cached for a long time)."""
    name = request.match_info["name"]
    found = STATIC_FILES.get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8",
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )
