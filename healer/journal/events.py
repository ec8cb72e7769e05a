"""The audit trail: one `events` row per state change, in the transaction of the change.

Every writer of a state change (the executor, approve and cancel) records it here, and
`STATE` is notified with it, so followers of the action's log learn of it once it commits.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from healer.journal import channels
from healer.journal.queries import q
from healer.journal.values import storable

__all__ = ["record"]


async def record(
    conn: psycopg.AsyncConnection[Any],
    action_id: int,
    actor: str,
    kind: str,
    from_state: str | None,
    to_state: str | None,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    """The event row of a state change, and the `STATE` notification followers wait for."""
    await conn.execute(
        q("insert_event"),
        {
            "action_id": action_id,
            "actor": actor,
            "kind": kind,
            "from_state": from_state,
            "to_state": to_state,
            "message": storable(message),
            "data": Jsonb(storable(data or {})),
        },
    )
    await channels.notify(conn, channels.STATE, action_id)
