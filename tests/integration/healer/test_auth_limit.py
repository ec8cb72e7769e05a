"""Wrong credentials are braked: past the limit a client gets 429 with Retry-After, its
credentials unchecked, on the webhook, the API and the console login; others are not held up."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from healer import appkeys
from healer.app import create_app
from healer.config import HealerConfig
from tests.support.log_helpers import AUTH_CONFIG, TOKEN, USER

Serve = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def serve(journal_dsn: str) -> AsyncIterator[Serve]:
    """`await serve(**auth_settings)`: the healer's app on a real socket on 127.0.0.1."""
    servers: list[TestServer] = []

    async def start(**limits: Any) -> TestServer:
        auth = AUTH_CONFIG
        config = HealerConfig.model_validate(
            {"healer": {"journal": {"dsn": journal_dsn}, "auth": {**auth, **limits}}}
        )
        server = TestServer(create_app(config, dsn=journal_dsn, run_executor=False))
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def send(
    server: TestServer, method: str, path: str, *, source: str = "127.0.0.1", **kw: Any
) -> tuple[int, str | None]:
    """One request from the loopback address `source`: its status and Retry-After."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, str(server.make_url(path)), allow_redirects=False, **kw) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")


def metric(server: TestServer, name: str, **labels: str) -> float:
    app: web.Application = server.app
    return app[appkeys.METRICS].registry.get_sample_value(name, labels) or 0.0


def login(server: TestServer, token: str) -> dict[str, Any]:
    origin = f"http://{server.host}:{server.port}"
    return {"data": {"token": token}, "headers": {"Origin": origin}}


async def test_parallel_wrong_logins_past_the_limit_get_429_and_others_still_log_in(
    serve: Serve,
) -> None:
    """50 wrong console logins at once: only max_failures are checked, the rest answered 429
    with Retry-After; a right token from another address still works, and the metrics count."""
    server = await serve(max_failures=5)
    answers = await asyncio.gather(
        *(send(server, "POST", "/login", **login(server, "wrong")) for _ in range(50))
    )
    statuses = [status for status, _ in answers]
    assert statuses.count(401) == 5
    assert statuses.count(429) == 45
    assert all(1 <= int(wait or 0) <= 60 for status, wait in answers if status == 429)
    assert metric(server, "taskmedic_auth_failures_total", reason="login") == 5
    assert metric(server, "taskmedic_auth_throttled_total") == 45
    other = await send(server, "POST", "/login", source="127.0.0.2", **login(server, TOKEN))
    assert other[0] == 303
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await send(server, "GET", "/api/actions", source="127.0.0.2", headers=bearer))[0] == 200
    # The blocked address is refused before its (right) token is looked at.
    assert (await send(server, "GET", "/api/actions", headers=bearer))[0] == 429


async def test_wrong_bearer_and_basic_are_limited_and_a_window_later_may_try_again(
    serve: Serve,
) -> None:
    """The webhook and the API count wrong bearer and basic credentials; right ones do not use
    up the budget; once the window has passed the address is heard again."""
    server = await serve(max_failures=3, failure_window=1)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = base64.b64encode(f"{USER}:nope".encode()).decode()
    for _ in range(10):
        assert (await send(server, "GET", "/api/actions", headers=bearer))[0] == 200
    wrong = [
        send(server, "POST", "/alerts", json={}, headers={"Authorization": "Bearer nope"})
        for _ in range(10)
    ] + [
        send(server, "GET", "/api/actions", headers={"Authorization": f"Basic {basic}"})
        for _ in range(10)
    ]
    statuses = [status for status, _ in await asyncio.gather(*wrong)]
    assert statuses.count(401) == 3
    assert statuses.count(429) == 17
    failures = metric(server, "taskmedic_auth_failures_total", reason="bearer") + metric(
        server, "taskmedic_auth_failures_total", reason="basic"
    )
    assert failures == 3
    assert (await send(server, "GET", "/api/actions", headers=bearer))[0] == 429
    await asyncio.sleep(1.2)
    assert (await send(server, "GET", "/api/actions", headers=bearer))[0] == 200


async def test_the_global_cap_holds_guesses_spread_over_addresses(serve: Serve) -> None:
    """Past max_failures_total from all addresses together, every address is held back."""
    server = await serve(max_failures=10, max_failures_total=4)
    wrong = {"Authorization": "Bearer nope"}
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
        assert (await send(server, "GET", "/api/actions", source=source, headers=wrong))[0] == 401
    status, wait = await send(server, "GET", "/api/actions", source="127.0.0.6", headers=wrong)
    assert status == 429
    assert wait is not None


async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_budget(
    serve: Serve,
) -> None:
    """Through a proxy listed in trusted_proxies, a guesser is counted by the address the proxy
    forwards, so people behind the same proxy are not locked out with it; a sender that is
    not a trusted proxy cannot dodge the limit by writing X-Forwarded-For itself."""
    server = await serve(max_failures=2, trusted_proxies=["127.0.0.1/32"])
    wrong = {"Authorization": "Bearer nope"}
    right = {"Authorization": f"Bearer {TOKEN}"}

    def via(client: str, headers: dict[str, str]) -> dict[str, Any]:
        return {"headers": {**headers, "X-Forwarded-For": f"{client}, 127.0.0.1"}}

    for _ in range(2):
        assert (await send(server, "GET", "/api/actions", **via("198.51.100.7", wrong)))[0] == 401
    assert (await send(server, "GET", "/api/actions", **via("198.51.100.7", right)))[0] == 429
    assert (await send(server, "GET", "/api/actions", **via("198.51.100.8", right)))[0] == 200

    # 127.0.0.2 is no proxy of ours: its X-Forwarded-For is ignored, it is itself.
    for n in range(2):
        spoofed = via(f"203.0.113.{n}", wrong)
        assert (await send(server, "GET", "/api/actions", source="127.0.0.2", **spoofed))[0] == 401
    spoofed = via("203.0.113.99", right)
    assert (await send(server, "GET", "/api/actions", source="127.0.0.2", **spoofed))[0] == 429
