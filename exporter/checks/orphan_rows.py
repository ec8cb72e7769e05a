"""`orphan_rows`: the query returns the orphans itself, `(key[, since])`.

For relational orphans such as ibex's `task_record` without its `task_action`. The writer of
the pair may be between its two inserts, so a row counts only past `grace` and when the query
returned it on two consecutive observations. `oldest_age_seconds` is the oldest finding's age.
"""

from __future__ import annotations

from collections.abc import Hashable

from exporter.checks.base import (
    Check,
    CheckContext,
    CheckOutcome,
    Finding,
    Observations,
    identity,
    to_utc,
)
from exporter.config import Config, OrphanRowsCheck

__all__ = ["OrphanRows"]


class OrphanRows(Check):
    spec: OrphanRowsCheck

    def __init__(self, spec: OrphanRowsCheck, config: Config) -> None:
        super().__init__(spec, config)
        self.observations = Observations(spec.grace)

    async def collect(self, ctx: CheckContext) -> CheckOutcome:
        result = await self.query(ctx, (1, 2))
        seen: set[Hashable] = set()
        candidates: dict[Hashable, Finding] = {}
        for row in result.rows:
            key = row[0]
            since = to_utc(row[1]) if len(row) > 1 else None
            ident = identity(key)
            age = self.observations.age(ident, result.now, since, seen)
            if age >= self.spec.grace:
                candidates[ident] = Finding(key, None, since, age, None)
        findings, confirmed = self.observations.settle(seen, candidates)
        findings.sort(key=lambda f: -f.age_seconds)
        oldest = findings[0].age_seconds if findings else 0.0
        return CheckOutcome(
            self.name, self.spec.type, findings, len(result.rows), oldest, result.now, confirmed
        )

    def reset(self) -> None:
        self.observations.reset()
