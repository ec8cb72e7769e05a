"""The `repair` step: re-run an exporter check now, then fix only the rows it confirms.

Why re-run: an alert is minutes old; a row it named may have finished since. The check runs
again (with its grace and, for orphan checks, its two observations) and the query receives
only the keys confirmed now as `%(keys)s`. `CheckUnknown` (the truth cannot be established)
fails the step and changes nothing. The query runs on the check's own database, in one
transaction (the action's shared one under `transaction: single` or dry run).

Recorded: the confirmed keys, the row count, and, when the query has a RETURNING clause, the
first column of the rows it returned (the keys it really changed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.checks import TraceSource, run_once
from exporter.config import Config
from exporter.errors import CheckUnknown
from healer.plan import RepairSpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import StepError, StepResult, jsonable
from healer.steps.sql import Sessions

__all__ = ["run_repair"]


async def run_repair(
    spec: RepairSpec,
    config: Config,
    sessions: Sessions,
    output: StepOutput,
    monitors: Mapping[str, TraceSource] | None = None,
) -> StepResult:
    """Confirm the check's findings now, then apply `spec.query` to those keys only."""
    try:
        database = config.check(spec.check).database
    except KeyError:
        raise StepError(f"check {spec.check!r} is not defined under checks") from None
    try:
        outcome = await run_once(config, spec.check, monitors)
    except CheckUnknown as exc:
        raise StepError(f"check {spec.check} could not establish the truth: {exc}") from None
    keys = [f.key for f in outcome.findings]
    output.system(f"check {spec.check}: {len(keys)} findings confirmed now")
    result: dict[str, Any] = {
        "check": spec.check,
        "database": database,
        "confirmed": len(keys),
        "confirmed_keys": jsonable(keys),
        "rowcount": 0,
    }
    if sessions.dry_run:
        result["dry_run"] = True
    if not keys:
        result["transaction"] = "none"
        return StepResult(result)
    res = await sessions.execute(database, spec.query, {**spec.params, "keys": keys}, spec.timeout)
    result["rowcount"] = res.rowcount
    result["transaction"] = sessions.transaction_of(own_transaction=False)
    if res.returned is not None:
        result["changed_keys"] = jsonable(res.returned)
    verb = "would change" if sessions.dry_run else "changed"
    output.system(f"repair on {database}: {verb} {res.rowcount} rows")
    return StepResult(result)
