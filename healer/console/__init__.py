"""The web console: watch and steer actions from a browser (server-rendered, works offline).

Routes: `GET /` recent actions; `GET /actions/{id}` one action with its live log; `GET|POST
/login`, `POST /logout`; `/static/…` the console's own script and stylesheet (no CDN). The
login form and the static files are public; the pages check the session themselves and send a
browser without one to the login form. Approve
and cancel go through the JSON API (`POST /api/actions/{id}/approve|cancel`), guarded against
cross-site requests by `session.csrf_middleware`.
"""

from __future__ import annotations

from aiohttp import web

from healer.console import session, views

__all__ = ["setup"]


def setup(app: web.Application) -> None:
    """Add the console's routes, static files and CSRF check to the healer's app."""
    app.middlewares.append(session.csrf_middleware)
    app.router.add_get("/", views.index, name="console_index")
    app.router.add_get(r"/actions/{id:[0-9]+}", views.action_page, name="console_action")
    app.router.add_get("/login", session.login_form, name="console_login_form")
    app.router.add_post("/login", session.login, name="console_login")
    app.router.add_post("/logout", session.logout, name="console_logout")
    app.router.add_get("/static/{name}", views.static_file, name="console_static")
