"""The ceiling of the ingest benchmark: an aiohttp server whose POST /alerts reads the body and
answers 200 without looking at it. Same framework, same client, same machine as the healer, so
the ratio shows what validation, auth and the journal transaction cost on top of HTTP.

Run as `python -m bench.bare_app PORT`.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def alerts(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/alerts", alerts)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
