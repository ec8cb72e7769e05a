"""What the healer's `/metrics` reads from the journal at scrape time.

Counted in the journal, not in a process, so every replica reports the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from healer.journal.queries import q

__all__ = ["actions_by_state", "open_circuits"]


async def actions_by_state(conn: AsyncConnection[Any]) -> dict[str, int]:
    """How many actions the journal holds in each state (states with none are absent)."""
    cur = await conn.execute(q("count_by_state"))
    return {state: int(n) for state, n in await cur.fetchall()}


async def open_circuits(
    conn: AsyncConnection[Any], limits: Sequence[tuple[str, int, float]]
) -> set[str]:
    """Of the rules given as (name, limit count, limit per seconds), those whose circuit
    breaker is open for at least one target right now."""
    cur = await conn.execute(
        q("open_circuits"),
        {
            "rules": [name for name, _, _ in limits],
            "counts": [count for _, count, _ in limits],
            "pers": [per for _, _, per in limits],
        },
    )
    return {row[0] for row in await cur.fetchall()}
