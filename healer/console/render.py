"""Templates of the web console: jinja2 with autoescape, and the filters the pages use."""

from __future__ import annotations

import hashlib
import json
import shlex
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from healer.actions import STATES

__all__ = ["STATES", "render", "static_url"]

FINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})

# The console loads nothing from elsewhere: scripts, styles and data all come from this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "\u2013"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def fmt_duration(seconds: Any) -> str:
    """A wall time people read at a glance: 850 ms, 4.2 s, 3 min 04 s, 2 h 05 min."""
    if seconds is None:
        return "\u2013"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_bytes(n: Any) -> str:
    size = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def fmt_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def fmt_shell(argv: Any) -> str:
    """An argv list as a shell would need it quoted (for reading only: it never runs in one)."""
    if not isinstance(argv, list):
        return str(argv)
    return shlex.join(str(a) for a in argv)


@cache
def _static_version(name: str) -> str:
    data = (resources.files("healer.console") / "static" / name).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


def static_url(name: str) -> str:
    """`/static/NAME?v=HASH`: a new release never runs with a stale cached script."""
    return f"/static/{name}?v={_static_version(name)}"


@cache
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=PackageLoader("healer.console", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=fmt_time,
        iso=fmt_iso,
        duration=fmt_duration,
        bytes=fmt_bytes,
        tojson_pretty=fmt_json,
        shell=fmt_shell,
    )
    env.globals.update(static=static_url, STATES=STATES, FINAL=FINAL)
    return env


def render(name: str, status: int = 200, **context: Any) -> web.Response:
    """An HTML response from template `name`, with the console's security headers."""
    html = environment().get_template(name).render(**context)
    return web.Response(
        text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )
