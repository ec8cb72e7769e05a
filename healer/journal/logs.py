"""The live output of actions: chunks appended by step output capture, read by the log API,
the log hub and the CLI.

A chunk's id orders it within its action: every writer of an action's chunks (the executor,
and the agents of a multi-host step) takes the action's chunk lock before writing and holds it
until commit, so ids grow in commit order and reading "every chunk after id N" never skips one
that commits later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from psycopg import AsyncConnection

from healer.journal import channels
from healer.journal.queries import q

__all__ = [
    "Chunk",
    "NewChunk",
    "Page",
    "action_state",
    "append",
    "follow_page",
    "last_chunk_id",
    "text_page",
]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One flushed piece of a step's output, as the executor wrote it (bytes, not text)."""

    id: int
    step: int
    stream: str  # stdout | stderr | system
    at: datetime
    data: bytes
    host: str = ""  # the host of a host run's output; "" for the healer's own


# Chunk locks: this fixed number in the high half, the action id in the low half ("tmlg").
_CHUNK_LOCK = 0x746D6C67 << 32


def chunk_lock_key(action_id: int) -> int:
    """The advisory lock every writer of `action_id`'s chunks holds until commit."""
    return _CHUNK_LOCK ^ (action_id & 0xFFFFFFFF)


@dataclass(slots=True)
class Page:
    """Chunks after a cursor and, from the same snapshot, the action's state."""

    state: str | None  # None: the action does not exist
    final: bool
    chunks: list[Chunk]
    full: bool  # the page hit its limit: more chunks may follow right away


class NewChunk(Protocol):
    """A chunk to append: its stream, the time of its first byte, its bytes."""

    @property
    def stream(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def data(self) -> bytes: ...


async def append(
    conn: AsyncConnection[Any],
    action_id: int,
    step_idx: int,
    chunks: Sequence[NewChunk],
    output_bytes: int | None,
    *,
    host: str = "",
) -> None:
    """Append chunks of one step, set its true byte count (unless None), notify `LOG`.

    The caller holds the action's fence (or the host run's) in this transaction.
    """
    base = {"action_id": action_id, "step_idx": step_idx, "host": host}
    if chunks:
        await conn.execute(q("log_chunk_lock"), {"key": chunk_lock_key(action_id)})
    for c in chunks:
        await conn.execute(
            q("log_write_chunk"), {**base, "stream": c.stream, "at": c.at, "data": c.data}
        )
    if output_bytes is not None and not host:
        await conn.execute(q("log_write_output_bytes"), {**base, "output_bytes": output_bytes})
    if chunks:
        await channels.notify(conn, channels.LOG, action_id)


async def action_state(conn: AsyncConnection[Any], action_id: int) -> str | None:
    """The action's state, None when there is no such action."""
    cur = await conn.execute(q("log_action_state"), {"action_id": action_id})
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def follow_page(conn: AsyncConnection[Any], action_id: int, after: int, limit: int) -> Page:
    """The chunks after `after` and the action's state, in one statement (one snapshot)."""
    cur = await conn.execute(
        q("log_follow_page"), {"action_id": action_id, "after": after, "limit": limit}
    )
    rows = await cur.fetchall()
    if not rows:
        return Page(None, True, [], False)
    chunks = [Chunk(r[2], r[3], r[4], r[5], bytes(r[6]), r[7]) for r in rows if r[2] is not None]
    return Page(rows[0][0], bool(rows[0][1]), chunks, len(chunks) >= limit)


async def last_chunk_id(conn: AsyncConnection[Any], action_id: int) -> int:
    """The id of the action's newest chunk, 0 when it has none."""
    cur = await conn.execute(q("log_last_chunk_id"), {"action_id": action_id})
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def text_page(
    conn: AsyncConnection[Any],
    action_id: int,
    *,
    after: int,
    stream: str | None,
    step: int | None,
    limit: int,
    host: str | None = None,
) -> list[Chunk]:
    """Up to `limit` chunks after `after`, optionally of one stream, step and/or host."""
    cur = await conn.execute(
        q("log_text_page"),
        {
            "action_id": action_id,
            "after": after,
            "stream": stream,
            "step": step,
            "host": host,
            "limit": limit,
        },
    )
    return [Chunk(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in await cur.fetchall()]
