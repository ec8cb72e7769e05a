"""Console sessions: one row per logged-in browser, so logging out ends it on every healer.

The row is keyed by a hash of the cookie, never the cookie itself, so reading the journal does
not let anyone act as a logged-in user.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from healer.journal.queries import q

__all__ = ["create", "delete", "find"]


async def create(
    conn: AsyncConnection[Any], token_hash: str, user_name: str, credential: str, ttl: float
) -> None:
    """Record a new session valid for `ttl` seconds; expired ones are dropped on the way."""
    async with conn.transaction():
        await conn.execute(q("prune_sessions"))
        await conn.execute(
            q("create_session"),
            {
                "token_hash": token_hash,
                "user_name": user_name,
                "credential": credential,
                "ttl": ttl,
            },
        )


async def find(conn: AsyncConnection[Any], token_hash: str) -> tuple[str, str] | None:
    """The user name and credential stamp of a live session, or None."""
    cur = await conn.execute(q("find_session"), {"token_hash": token_hash})
    row = await cur.fetchone()
    return (str(row[0]), str(row[1])) if row is not None else None


async def delete(conn: AsyncConnection[Any], token_hash: str) -> None:
    """End a session (logging out)."""
    await conn.execute(q("delete_session"), {"token_hash": token_hash})
