"""Live log followers are bounded: past the limit of one address a new follower gets 429,
past the limit of the process 503, both with Retry-After; a follower that leaves frees its
place at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from healer import log_api
from healer.app import create_app
from healer.config import HealerConfig
from tests.support.log_helpers import create_action

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[dict[str, Any]], Awaitable[Client]]


@pytest.fixture
def make_client(
    journal_dsn: str, aiohttp_client: Callable[[web.Application], Awaitable[Client]]
) -> MakeClient:
    async def make(limits: dict[str, Any]) -> Client:
        config = HealerConfig.model_validate(
            {
                "healer": {
                    "journal": {"dsn": journal_dsn},
                    "auth": {"allow_unauthenticated": True},
                    "limits": limits,
                }
            }
        )
        return await aiohttp_client(create_app(config, dsn=journal_dsn, run_executor=False))

    return make


async def until_followers(client: Client, n: int) -> None:
    async with asyncio.timeout(10):
        while client.app[log_api.FOLLOWERS].total != n:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("limits", "refused"),
    [
        ({"followers_per_client": 2, "followers": 10}, 429),
        ({"followers_per_client": 10, "followers": 2}, 503),
    ],
    ids=["per-client", "process"],
)
async def test_a_follower_past_the_limit_is_refused_until_one_leaves(
    make_client: MakeClient,
    journal_conn: psycopg.AsyncConnection[Any],
    limits: dict[str, Any],
    refused: int,
) -> None:
    client = await make_client(limits)
    aid = await create_action(journal_conn)
    url = f"/api/actions/{aid}/log"
    first = await client.get(url, params={"follow": "1"})
    second = await client.get(url, params={"follow": "1"})
    assert (first.status, second.status) == (200, 200)
    third = await client.get(url, params={"follow": "1"})
    assert third.status == refused
    assert third.headers["Retry-After"] == "5"
    assert "healer.limits.followers" in await third.text()
    # The whole log as text is no follower: it is still served.
    assert (await client.get(url)).status == 200
    first.close()
    await until_followers(client, 1)
    again = await client.get(url, params={"follow": "1"})
    assert again.status == 200
    again.close()
    second.close()
    await until_followers(client, 0)
    assert client.app[log_api.FOLLOWERS].by_client == {}
