"""Keeping a claimed action's lease: renewed every third of its length while the attempt runs.

The lease is what lets another healer rescue an action whose runner died, so a renewal that
fails (the lease was taken over, or the journal stayed unreachable past the retry window)
stops the attempt at once: it must write nothing more about an action it may no longer own.
A cancel request is noticed on the same round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from healer.errors import JournalUnavailable, LeaseLost
from healer.journal import executor as journal_executor

__all__ = ["renew_lease"]

log = logging.getLogger(__name__)


async def renew_lease(
    journal: journal_executor.Journal,
    fence: journal_executor.Fence,
    lease: float,
    interrupt: Callable[[str], None],
) -> None:
    """Renew `fence`'s lease until cancelled; `interrupt("lease_lost")` when it cannot be kept,
    `interrupt("cancel")` when a cancel was requested."""
    while True:
        await asyncio.sleep(lease / 3)
        try:
            cancel = await journal.run(lambda c: journal_executor.renew(c, fence, lease))
        except (LeaseLost, JournalUnavailable) as exc:
            log.warning("action %s: lease not renewed: %s", fence.action_id, exc)
            interrupt("lease_lost")
            return
        if cancel:
            interrupt("cancel")
