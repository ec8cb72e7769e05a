"""`taskmedic rules replay`: what the journal received, and the journal's own decision.

Replay writes nothing. It asks `taskmedic_decide` (migration 0002), the function ingest runs for
every action it records, so a replayed alert is decided by the same code as a received one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from healer.journal.queries import q

__all__ = ["alerts_since", "decide"]


async def alerts_since(conn: AsyncConnection[Any], since: datetime) -> list[dict[str, Any]]:
    """The alerts received since `since`, oldest first, each with the actions it started."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("alerts_since"), {"since": since})
        return await cur.fetchall()


async def decide(
    conn: AsyncConnection[Any], inputs: Mapping[str, Any], *, in_cooldown: int, in_limit: int
) -> tuple[str, str]:
    """The state and reason `taskmedic_decide` gives an action, from the rule's settings and
    reasons (`inputs`, as ingest sends them) and the two counts of recent actions."""
    cur = await conn.execute(
        q("decide"), {**inputs, "in_cooldown": in_cooldown, "in_limit": in_limit}
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), str(row[1])
