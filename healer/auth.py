"""Who may post alerts, read actions, and approve them.

Alertmanager sends `Authorization: Bearer …` or basic auth (`bearer_token`, `basic_auth`);
people log in as one of `users`, with basic auth on the API or the console's login form, which
sets the session cookie `taskmedic_session`. Each credential carries roles: `post_alerts`
(POST /alerts), `read` (the API's reads and the console) and `approve` (approve and cancel;
it lets one read too). Alertmanager's credential never approves, so `approved_by` and
`cancelled_by` always name a person.

Every comparison is constant-time (hmac.compare_digest over hashes, against every configured
credential), and a refusal records nothing: the auth middleware answers 401 (no or wrong
credentials) or 403 (a role missing) before any handler reads the body. `/healthz`, `/readyz`
and `/metrics` are public; a handler marks itself public with `@public` (the login form) and
the role it needs with `@requires` (`read` when not marked).

Sessions are rows of the journal (`healer.journal.sessions`) keyed by a hash of a random
cookie: logging out deletes the row on every healer at once, and each row carries a stamp of
the user's credential and roles, so changing either ends the user's sessions.

Guessing is braked (`healer.auth_limit`): past `max_failures` wrong credentials from one
address, or `max_failures_total` from all, within `failure_window`, a request that presents
credentials is answered 429 with Retry-After without checking them. Behind a proxy listed in
`trusted_proxies`, the address is the one it forwards, and its X-Forwarded-Proto tells whether
the browser used HTTPS (the cookie's Secure flag).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from healer.auth_limit import FailureLimiter
from healer.config import AuthSettings
from healer.errors import JournalUnavailable
from healer.journal import sessions
from healer.journal.pool import journal_errors
from healer.metrics import HealerMetrics

__all__ = [
    "ALL_ROLES",
    "SESSION_COOKIE",
    "Authenticator",
    "Identity",
    "auth_middleware",
    "authenticated_by_header",
    "identity_of",
    "public",
    "remember",
    "requires",
    "roles_of",
]

SESSION_COOKIE = "taskmedic_session"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ALL_ROLES = frozenset({"post_alerts", "read", "approve"})
ROLE_WORDS = {
    "post_alerts": "posting alerts",
    "read": "reading actions",
    "approve": "approving and cancelling actions",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Pool = AsyncConnectionPool[Any]
H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class Identity:
    """Who sent a request, what they may do, and how they proved it (`header`, `session`,
    or `none` when the loopback demo runs without credentials)."""

    name: str
    roles: frozenset[str]
    via: str = "header"


IDENTITY = web.RequestKey("identity", Identity)


def public(handler: H) -> H:
    """Mark a handler as reachable without credentials (the console's login form)."""
    handler.__taskmedic_public__ = True  # type: ignore[attr-defined]
    return handler


def requires(role: str) -> Callable[[H], H]:
    """Mark the role a handler needs (`read` when not marked)."""
    if role not in ALL_ROLES:
        raise ValueError(f"unknown role {role!r}")

    def mark(handler: H) -> H:
        handler.__taskmedic_role__ = role  # type: ignore[attr-defined]
        return handler

    return mark


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _eq(a: str, b: str) -> bool:
    """Constant time, and hashing first keeps the length of the secret from showing too."""
    return hmac.compare_digest(_digest(a), _digest(b))


def _hash_cookie(value: str) -> str:
    return hashlib.sha256(b"taskmedic-session\x00" + value.encode()).hexdigest()


@dataclass(frozen=True)
class _Credential:
    name: str
    secret: str
    roles: frozenset[str]

    @property
    def material(self) -> bytes:
        """What a session's stamp covers: changing the secret or the roles ends sessions."""
        text = "\x00".join([self.name, self.secret, ",".join(sorted(self.roles))])
        return _digest("taskmedic-credential\x00" + text)


def _effective(roles: Iterable[str]) -> frozenset[str]:
    out = set(roles)
    if "approve" in out:  # nobody approves a plan they may not read
        out.add("read")
    return frozenset(out)


class Authenticator:
    """Checks credentials, roles and console sessions; `enabled` is False only for the
    loopback demo."""

    def __init__(self, settings: AuthSettings, metrics: HealerMetrics | None = None) -> None:
        self.metrics = metrics or HealerMetrics()
        self.limiter = FailureLimiter(
            settings.max_failures, settings.max_failures_total, settings.failure_window
        )
        am_roles = _effective(settings.alertmanager_roles)
        token = settings.secret_token()
        self._token = _Credential("token", token, am_roles) if token is not None else None
        passwords = []
        if settings.basic_auth is not None:
            basic = settings.basic_auth
            passwords.append(_Credential(basic.username, basic.secret_password(), am_roles))
        for user in settings.users:
            passwords.append(_Credential(user.name, user.secret_password(), _effective(user.roles)))
        self._passwords = passwords
        self._by_name = {c.name: c for c in passwords}
        if self._token is not None:
            self._by_name.setdefault(self._token.name, self._token)
        self._ttl = settings.session_ttl
        self._proxies = list(settings.trusted_proxies)
        self.enabled = settings.has_credentials

    @property
    def schemes(self) -> list[str]:
        out = []
        if self._token is not None:
            out.append("Bearer")
        if self._passwords:
            out.append("Basic")
        return out

    def login_fields(self) -> tuple[bool, bool]:
        """Which fields the login form needs: (token, username and password). Only
        credentials that may read the console count."""
        token = self._token is not None and "read" in self._token.roles
        password = any("read" in c.roles for c in self._passwords)
        return token, password

    def verify_token(self, token: str) -> Identity | None:
        if self._token is None:
            return None
        return _identity(self._token) if _eq(token, self._token.secret) else None

    def verify_password(self, username: str, password: str) -> Identity | None:
        """The identity whose name and password these are, or None. Every credential is
        compared, so the time taken does not tell which name exists."""
        found = None
        for cred in self._passwords:
            # Both comparisons always run, so timing does not tell which one failed.
            name_ok = _eq(username, cred.name)
            pass_ok = _eq(password, cred.secret)
            if name_ok and pass_ok:
                found = cred
        return _identity(found) if found is not None else None

    # --- requests ----------------------------------------------------------------------------

    async def identify(self, request: web.Request, pool: Pool | None) -> Identity | None:
        """Who sent this request, None if nobody (no or wrong credentials).

        An `Authorization` header, whatever its scheme, is the only credential looked at when
        present: a request never falls back to the session cookie behind it. Raises
        `HTTPTooManyRequests` when the sender is past the failure limit and presents
        credentials (a wrong token or password counts), and `JournalUnavailable` when a
        session cannot be looked up.
        """
        if not self.enabled:
            return Identity("anonymous", ALL_ROLES, "none")
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            scheme, value = scheme.lower(), value.strip()
            if scheme not in ("bearer", "basic") or not value:
                return None
            self.check_limit(request)
            who = self._header_identity(scheme, value)
            if who is None:
                self.failed(request, scheme)
            return who
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and pool is not None:
            self.check_limit(request)
            who = await self._session_identity(pool, cookie)
            if who is not None:
                return who
            # An expired cookie is a browser coming back, not a guess: not counted against it.
            self.metrics.auth_failures.labels("session").inc()
        return None

    def _header_identity(self, scheme: str, value: str) -> Identity | None:
        if scheme == "bearer":
            return self.verify_token(value)
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        return self.verify_password(username, password) if sep else None

    async def _session_identity(self, pool: Pool, cookie: str) -> Identity | None:
        with journal_errors():
            async with pool.connection() as conn:
                row = await sessions.find(conn, _hash_cookie(cookie))
        if row is None:
            return None
        name, stamp = row
        cred = self._by_name.get(name)
        if cred is None or not _eq(stamp, _stamp(cookie, cred)):
            return None  # the user is gone, or their password or roles changed
        return _identity(cred, "session")

    async def open_session(self, pool: Pool, who: Identity) -> str:
        """Record a session for `who` in the journal; the cookie value to set."""
        cred = self._by_name[who.name]
        cookie = secrets.token_urlsafe(32)
        with journal_errors():
            async with pool.connection() as conn:
                await sessions.create(
                    conn, _hash_cookie(cookie), who.name, _stamp(cookie, cred), self._ttl
                )
        return cookie

    async def close_session(self, pool: Pool, cookie: str) -> None:
        """End the session of this cookie on every healer (logging out)."""
        with journal_errors():
            async with pool.connection() as conn:
                await sessions.delete(conn, _hash_cookie(cookie))

    def _from_proxy(self, request: web.Request) -> bool:
        if not self._proxies or request.remote is None:
            return False
        try:
            addr = ipaddress.ip_address(request.remote)
        except ValueError:  # a unix socket
            return False
        return any(addr in net for net in self._proxies)

    def is_secure(self, request: web.Request) -> bool:
        """Whether the browser used HTTPS: the connection's own TLS, or a trusted proxy's
        X-Forwarded-Proto (any other sender's is ignored)."""
        if request.secure:
            return True
        if not self._from_proxy(request):
            return False
        proto = request.headers.get("X-Forwarded-Proto", "")
        # The proxy nearest to us appended the last value.
        return proto.rsplit(",", 1)[-1].strip().lower() == "https"

    def client(self, request: web.Request) -> str:
        """The sender's address for the failure limit: behind trusted proxies, the nearest
        address in X-Forwarded-For that is not one of them."""
        remote = request.remote or ""
        if not self._from_proxy(request):
            return remote
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            try:
                addr = ipaddress.ip_address(hop)
            except ValueError:
                return hop[:64]
            if not any(addr in net for net in self._proxies):
                return str(addr)
        return remote

    def check_limit(self, request: web.Request) -> None:
        """`HTTPTooManyRequests` (with Retry-After) when the sender is past the limit."""
        wait = self.limiter.retry_after(self.client(request))
        if wait is not None:
            self.metrics.auth_throttled.inc()
            raise web.HTTPTooManyRequests(
                text='{"error": "too many wrong credentials: try again later"}',
                content_type="application/json",
                headers={"Retry-After": str(wait)},
            )

    def failed(self, request: web.Request, reason: str) -> None:
        """The sender presented wrong credentials (`reason`: bearer, basic or login)."""
        self.limiter.failed(self.client(request))
        self.metrics.auth_failures.labels(reason).inc()

    def challenge(self) -> web.HTTPUnauthorized:
        challenges = [f'{s} realm="taskmedic"' for s in self.schemes]
        return web.HTTPUnauthorized(
            text='{"error": "unauthorized: missing or wrong credentials"}',
            content_type="application/json",
            headers={"WWW-Authenticate": ", ".join(challenges)},
        )


def _identity(cred: _Credential, via: str = "header") -> Identity:
    return Identity(cred.name, cred.roles, via)


def _stamp(cookie: str, cred: _Credential) -> str:
    """Keyed by the cookie, which the journal never holds: a reader of the journal cannot
    test password guesses against it."""
    return hmac.new(cookie.encode(), cred.material, hashlib.sha256).hexdigest()


def forbidden(who: Identity, role: str) -> web.HTTPForbidden:
    """403 naming the role that is missing (never the credential)."""
    message = (
        f"forbidden: {ROLE_WORDS[role]} needs the {role} role, which {who.name!r} does not have"
    )
    return web.HTTPForbidden(text=json.dumps({"error": message}), content_type="application/json")


def identity_of(request: web.Request) -> str:
    """The name the auth middleware established (for `approved_by`, event actors)."""
    got = request.get(IDENTITY)
    return got.name if got is not None else "anonymous"


def remember(request: web.Request, who: Identity) -> None:
    """Record who sent the request, for handlers checked outside the middleware (pages)."""
    request[IDENTITY] = who


def roles_of(request: web.Request) -> frozenset[str]:
    """What the request's sender may do (nothing when it was not authenticated)."""
    got = request.get(IDENTITY)
    return got.roles if got is not None else frozenset()


def authenticated_by_header(request: web.Request) -> bool:
    """True when the request proved itself with its Authorization header, not a cookie
    (cross-site requests cannot set that header, so it needs no CSRF token)."""
    got = request.get(IDENTITY)
    return got is not None and got.via == "header"


def auth_middleware(auth: Authenticator, pool: Callable[[], Pool | None]) -> Any:
    """Refuse every request without valid credentials (401) or the role its handler needs
    (403), except public paths and handlers. `pool` gives the journal's pool (sessions)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or getattr(handler, "__taskmedic_public__", False):
            return await handler(request)
        try:
            who = await auth.identify(request, pool())
        except JournalUnavailable:
            raise web.HTTPServiceUnavailable(
                text='{"error": "journal unavailable"}', content_type="application/json"
            ) from None
        if who is None:
            raise auth.challenge()
        role = getattr(handler, "__taskmedic_role__", "read")
        if role not in who.roles:
            raise forbidden(who, role)
        remember(request, who)
        return await handler(request)

    return middleware
