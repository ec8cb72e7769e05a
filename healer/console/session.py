"""Logging in to the console, and keeping other sites from acting with its session (CSRF).

`POST /login` takes a user's name and password (or, when Alertmanager's token may read, that
token) from a form (never from the URL), checks them with the app's Authenticator (constant
time), records a session in the journal and sets its cookie: HttpOnly (scripts cannot read
it), SameSite=Strict (other sites cannot send it), Secure when the browser used HTTPS (itself
or through a trusted proxy). `POST /logout` deletes the session in the journal, so a copy of
the cookie is worthless afterwards. On top of SameSite, every state-changing request must come
from this origin (`Origin`, `Sec-Fetch-Site`), and one not authenticated by its own
Authorization header must carry a token only the console's own pages know: an HMAC of the
cookie, sent as `X-Taskmedic-CSRF` (scripts) or a `csrf_token` form field.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from healer import appkeys
from healer.auth import (
    SESSION_COOKIE,
    Authenticator,
    Identity,
    authenticated_by_header,
    public,
    remember,
)
from healer.console.render import render
from healer.errors import JournalUnavailable

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "console_page",
    "csrf_middleware",
    "csrf_token",
    "has_session",
    "login",
    "login_form",
    "logout",
]

CSRF_HEADER = "X-Taskmedic-CSRF"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
FAILED_LOGIN_DELAY = 0.5


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authenticator(app: web.Application) -> Authenticator | None:
    return app.get(appkeys.AUTH)


def console_page(handler: Handler) -> Handler:
    """A page for people: without a valid session (or credentials) go to the login form.

    The API's auth middleware would answer 401 with a Basic challenge, which a browser shows as
    a bare password prompt; the console checks the same credentials itself and redirects.
    """

    @public
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        auth = _authenticator(request.app)
        if auth is not None:
            who = await _identify(request, auth)
            if who is None:
                if "fragment" in request.query:  # a refresh by the page's script: it redirects
                    raise web.HTTPUnauthorized(text="log in again")
                raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe="/?=&"))
            if "read" not in who.roles:
                raise web.HTTPForbidden(text=f"{who.name} may not read the console")
            remember(request, who)
        return await handler(request)

    return wrapper


async def _identify(request: web.Request, auth: Authenticator) -> Identity | None:
    try:
        return await auth.identify(request, request.app.get(appkeys.JOURNAL_POOL))
    except JournalUnavailable as e:
        raise web.HTTPServiceUnavailable(text="the journal is unavailable") from e


def has_session(request: web.Request) -> bool:
    return bool(request.cookies.get(SESSION_COOKIE))


def csrf_token(request: web.Request) -> str:
    """The token the console's pages embed; bound to this session, unknowable elsewhere."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return ""
    return hmac.new(cookie.encode(), b"taskmedic-csrf", hashlib.sha256).hexdigest()


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        return referer is None or urlsplit(referer).netloc == request.host
    return urlsplit(origin).netloc == request.host


@web.middleware
async def csrf_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse a state-changing request another site made a browser send (see module doc)."""
    if request.method in SAFE_METHODS:
        return await handler(request)
    if not _same_origin(request):
        raise web.HTTPForbidden(text="cross-site request refused")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not authenticated_by_header(request) and request.path != "/login":
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.content_type in FORM_TYPES:
            value = (await request.post()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not sent or not hmac.compare_digest(sent, csrf_token(request)):
            raise web.HTTPForbidden(text="missing or stale CSRF token: reload the page")
    return await handler(request)


def safe_next(value: Any) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(ch) < 0x20 for ch in value):
        return "/"
    return value


def _login_page(
    auth: Authenticator, target: str, error: str = "", status: int = 200
) -> web.Response:
    token, password = auth.login_fields()
    return render(
        "login.html",
        status=status,
        next=target,
        error=error,
        token_field=token,
        password_fields=password,
    )


@public
async def login_form(request: web.Request) -> web.Response:
    """The login form, with only the fields the configured credentials need."""
    auth = _authenticator(request.app)
    if auth is None or not auth.enabled:  # nothing to log in with (the loopback demo)
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return _login_page(auth, safe_next(request.query.get("next")))


@public
async def login(request: web.Request) -> web.Response:
    """Check the form's username/password (or token); record a session and set its cookie."""
    auth = _authenticator(request.app)
    if auth is None or not auth.enabled:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    form = await request.post()

    def field(name: str) -> str | None:
        value = form.get(name)
        return value if isinstance(value, str) and value else None

    target = safe_next(form.get("next"))
    token, username, password = field("token"), field("username"), field("password")
    auth.check_limit(request)  # past it: 429 before anything is compared
    who = None
    if token:
        who = auth.verify_token(token)
    elif username and password:
        who = auth.verify_password(username, password)
    if who is None:
        auth.failed(request, "login")
        await asyncio.sleep(FAILED_LOGIN_DELAY)  # a small brake on guessing
        wrong = "Wrong username or password." if not token else "Wrong token."
        return _login_page(auth, target, wrong, status=401)
    if "read" not in who.roles:
        return _login_page(
            auth,
            target,
            "This credential may only post alerts: log in as one of the users in "
            "healer.auth.users.",
            status=403,
        )
    pool = request.app.get(appkeys.JOURNAL_POOL)
    if pool is None:
        raise web.HTTPServiceUnavailable(text="the journal is unavailable")
    try:
        cookie = await auth.open_session(pool, who)
    except JournalUnavailable as e:
        raise web.HTTPServiceUnavailable(text="the journal is unavailable") from e
    resp = web.HTTPSeeOther(target)
    resp.set_cookie(
        SESSION_COOKIE,
        cookie,
        httponly=True,
        samesite="Strict",
        secure=auth.is_secure(request),
        path="/",
    )
    raise resp


@public
async def logout(request: web.Request) -> web.Response:
    """End the session in the journal (so a copied cookie stops working) and drop the cookie."""
    auth = _authenticator(request.app)
    cookie = request.cookies.get(SESSION_COOKIE)
    pool = request.app.get(appkeys.JOURNAL_POOL)
    if auth is not None and cookie and pool is not None:
        try:
            await auth.close_session(pool, cookie)
        except JournalUnavailable as e:
            raise web.HTTPServiceUnavailable(
                text="the journal is unavailable: log out again"
            ) from e
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp
