"""`stale_status`: rows `(key, timestamp)` that should be refreshed at least every `max_age`.

A TacticalRMM-style status cache goes stale silently when celery beat or its worker stops.
A row is stale when its timestamp is older than `max_age` by the database's clock, or NULL
(never refreshed). `oldest_age_seconds` is the age of the oldest timestamp among all rows
(stale or not, 0 for an empty result), so a dashboard sees the cache age before it is stale.
"""

from __future__ import annotations

import math

from exporter.checks.base import (
    Check,
    CheckContext,
    CheckOutcome,
    Finding,
    age_seconds,
    to_utc,
)
from exporter.config import StaleStatusCheck

__all__ = ["StaleStatus"]


class StaleStatus(Check):
    spec: StaleStatusCheck

    async def collect(self, ctx: CheckContext) -> CheckOutcome:
        result = await self.query(ctx, (2, 2))
        findings: list[Finding] = []
        oldest = 0.0
        for key, raw in result.rows:
            since = to_utc(raw)
            age = math.inf if since is None else age_seconds(result.now, since)
            if since is not None:
                oldest = max(oldest, age)
            if age > self.spec.max_age:
                findings.append(Finding(key, None, since, age, None))
        findings.sort(key=lambda f: -f.age_seconds)
        return CheckOutcome(
            self.name, self.spec.type, findings, len(result.rows), oldest, result.now
        )
