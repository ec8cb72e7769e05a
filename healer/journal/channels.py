"""The journal's notification channels: the names NOTIFY and LISTEN agree on.

A notification's payload is an action id as text, and it is sent in the transaction that made
the change, so a listener hears of a change only once it is committed. The journal's own
functions (migrations 0002 and 0003) send `ACTIONS` and `STATE` by their literal names; a test
holds those names to these constants.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from healer.journal.queries import q

__all__ = ["ACTIONS", "ALL", "CANCEL", "LOG", "STATE", "listen", "notify", "ping"]

ACTIONS = "taskmedic_actions"  # an action became pending: executors wake up and claim
STATE = "taskmedic_state"  # an action changed state: followers of its log learn it ended
CANCEL = "taskmedic_cancel"  # a running action should stop: only executors listen (and poll)
LOG = "taskmedic_log"  # a chunk of the action's log was appended
ALL = (ACTIONS, STATE, CANCEL, LOG)


def _known(channel: str) -> str:
    if channel not in ALL:
        raise ValueError(f"{channel!r} is not one of the journal's channels")
    return channel


async def notify(conn: psycopg.AsyncConnection[Any], channel: str, action_id: int) -> None:
    """Notify `channel` of `action_id` when the transaction under way commits."""
    await conn.execute(q("notify"), {"channel": _known(channel), "action_id": action_id})


async def listen(conn: psycopg.AsyncConnection[Any], *channels: str) -> None:
    """Listen on `channels` (on a connection of its own, in autocommit)."""
    for channel in channels:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_known(channel))))


async def ping(conn: psycopg.AsyncConnection[Any]) -> None:
    """One round trip: raises when a listening connection no longer works."""
    await conn.execute(q("ping"))
