"""Who may post alerts and use the API and console.

Alertmanager sends `Authorization: Bearer …` or basic auth; the console uses a signed session
cookie `taskmedic_session` issued after its login form checked the same credentials. Every
comparison is constant-time (hmac.compare_digest) and a refusal records nothing: the auth
middleware answers 401 before any handler reads the body. `/healthz`, `/readyz` and `/metrics`
are public; a handler marks itself public with `@public` (the console's login form).

Guessing is braked (`healer.auth_limit`): past `max_failures` wrong credentials from one
address, or `max_failures_total` from all, within `failure_window`, a request that presents
credentials is answered 429 with Retry-After without checking them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from healer.auth_limit import FailureLimiter
from healer.config import AuthSettings
from healer.metrics import HealerMetrics

__all__ = ["SESSION_COOKIE", "Authenticator", "auth_middleware", "identity_of", "public"]

SESSION_COOKIE = "taskmedic_session"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
IDENTITY = web.RequestKey("identity", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])


def public(handler: H) -> H:
    """Mark a handler as reachable without credentials (the console's login form)."""
    handler.__taskmedic_public__ = True  # type: ignore[attr-defined]
    return handler


def _eq(a: str, b: str) -> bool:
    """Constant time, and hashing first keeps the length of the secret from showing too."""
    da = hashlib.sha256(a.encode("utf-8", "surrogateescape")).digest()
    db = hashlib.sha256(b.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(da, db)


class Authenticator:
    """Checks credentials and console sessions; `enabled` is False only for the loopback demo."""

    def __init__(self, settings: AuthSettings, metrics: HealerMetrics | None = None) -> None:
        self.metrics = metrics or HealerMetrics()
        self.limiter = FailureLimiter(
            settings.max_failures, settings.max_failures_total, settings.failure_window
        )
        self._token = settings.secret_token()
        basic = settings.basic_auth
        self._username = basic.username if basic else None
        self._password = basic.secret_password() if basic else None
        self._ttl = settings.session_ttl
        if settings.session_secret is not None:
            material = settings.session_secret.get_secret_value()
        else:
            material = f"{self._token or ''}\x00{self._username or ''}\x00{self._password or ''}"
        self._key = hashlib.sha256(b"taskmedic-session\x00" + material.encode()).digest()
        self.enabled = settings.has_credentials

    @property
    def schemes(self) -> list[str]:
        out = []
        if self._token is not None:
            out.append("Bearer")
        if self._username is not None:
            out.append("Basic")
        return out

    def verify_credentials(
        self, token: str | None = None, username: str | None = None, password: str | None = None
    ) -> bool:
        """True when the token, or the username and password, are right (constant time)."""
        if not self.enabled:
            return True
        ok = False
        if token is not None and self._token is not None:
            ok |= _eq(token, self._token)
        if username is not None and password is not None and self._username is not None:
            assert self._password is not None
            # Both comparisons always run, so timing does not tell which one failed.
            user_ok = _eq(username, self._username)
            pass_ok = _eq(password, self._password)
            ok |= user_ok and pass_ok
        return ok

    def issue_session(self) -> str:
        """A cookie value valid for `session_ttl`: `expiry.nonce.signature`."""
        payload = f"{int(time.time() + self._ttl)}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._sign(payload)}"

    def verify_session(self, value: str) -> bool:
        parts = value.split(".")
        if len(parts) != 3:
            return False
        payload = f"{parts[0]}.{parts[1]}"
        if not _eq(parts[2], self._sign(payload)):
            return False
        try:
            return int(parts[0]) > time.time()
        except ValueError:
            return False

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def identify(self, request: web.Request) -> str | None:
        """Who sent this request (`token`, the basic-auth user, `session`), None if nobody.

        `HTTPTooManyRequests` when its address is past the failure limit and it presents
        credentials; a wrong token or password counts against the limit.
        """
        if not self.enabled:
            return "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        cookie = request.cookies.get(SESSION_COOKIE)
        if scheme in ("bearer", "basic") and value:
            self.check_limit(request)
            who = self._header_identity(scheme, value)
            if who is None:
                self.failed(request, scheme)
            return who
        if cookie:
            self.check_limit(request)
            if self.verify_session(cookie):
                return "session"
            # An expired cookie is a browser coming back, not a guess: not counted against it.
            self.metrics.auth_failures.labels("session").inc()
        return None

    def _header_identity(self, scheme: str, value: str) -> str | None:
        if scheme == "bearer":
            return "token" if self.verify_credentials(token=value) else None
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        if sep and self.verify_credentials(username=username, password=password):
            return username
        return None

    def check_limit(self, request: web.Request) -> None:
        """`HTTPTooManyRequests` (with Retry-After) when the sender is past the limit."""
        wait = self.limiter.retry_after(request.remote or "")
        if wait is not None:
            self.metrics.auth_throttled.inc()
            raise web.HTTPTooManyRequests(
                text='{"error": "too many wrong credentials: try again later"}',
                content_type="application/json",
                headers={"Retry-After": str(wait)},
            )

    def failed(self, request: web.Request, reason: str) -> None:
        """The sender presented wrong credentials (`reason`: bearer, basic or login)."""
        self.limiter.failed(request.remote or "")
        self.metrics.auth_failures.labels(reason).inc()

    def challenge(self) -> web.HTTPUnauthorized:
        challenges = [f'{s} realm="taskmedic"' for s in self.schemes]
        return web.HTTPUnauthorized(
            text='{"error": "unauthorized: missing or wrong credentials"}',
            content_type="application/json",
            headers={"WWW-Authenticate": ", ".join(challenges)},
        )


def identity_of(request: web.Request) -> str:
    """The identity the auth middleware established (for `approved_by`, event actors)."""
    got = request.get(IDENTITY)
    return got if isinstance(got, str) else "anonymous"


def auth_middleware(auth: Authenticator) -> Any:
    """Refuse every request without valid credentials, except public paths and handlers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or getattr(handler, "__taskmedic_public__", False):
            return await handler(request)
        who = auth.identify(request)
        if who is None:
            raise auth.challenge()
        request[IDENTITY] = who
        return await handler(request)

    return middleware
