"""Rescuing what nobody runs any more: actions whose lease expired, approvals past their deadline.

Every executor sweeps. A `running` action whose lease expired (its healer was killed, or
stalled past the lease) becomes `interrupted`, then `pending` again (on_interrupt: retry; steps
recorded as done are not re-run) or `failed`; the step that was running is marked `interrupted`
and keeps the output it flushed. Approvals waiting past their deadline become `cancelled`. So
no action stays `running` for ever, whatever happened to the process that ran it.
"""

from __future__ import annotations

import logging

from healer.executor.attempt import MAX_ATTEMPTS, count
from healer.journal import executor as journal_executor
from healer.metrics import HealerMetrics

__all__ = ["sweep"]

log = logging.getLogger(__name__)


async def sweep(
    journal: journal_executor.Journal, owner: str, approval_timeout: float, metrics: HealerMetrics
) -> list[journal_executor.Settled]:
    """One sweep: expired leases, then expired approvals. Returns what it settled."""
    settled = await journal.run(lambda c: journal_executor.sweep_expired(c, owner, MAX_ATTEMPTS))
    settled += await journal.run(
        lambda c: journal_executor.expire_approvals(c, approval_timeout, owner)
    )
    for s in settled:
        count(metrics, s)
        log.info("swept action %s (rule %s): now %s", s.action_id, s.rule, s.state)
    return settled
