"""The `repair` step: re-run an exporter check now, then fix only the rows it confirms.

Why re-run: an alert is minutes old; a row it named may have finished since. The check runs
again (with its grace and, for orphan checks, its two observations) and the repair receives
only the keys confirmed now. `CheckUnknown` (the truth cannot be established) fails the step
and changes nothing.

A repair is SQL or HTTP. SQL receives the keys as `%(keys)s` and runs on `database` (a login
with write rights; by default the check's own), in one transaction (the action's shared one
under `transaction: single` or dry run). HTTP sends one request per key, in key order,
stopping at the first wrong answer: the app's own API does what the app does (ibex's cancel
settles the waiting hosts too). In dry run no request is sent.

Recorded: the confirmed keys, the row count or the answers, and, when the query has a
RETURNING clause, the first column of the rows it returned (the keys it really changed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from exporter.checks import TraceSource, run_once
from exporter.config import Config
from exporter.errors import CheckUnknown
from healer.errors import StepFailed
from healer.plan import REPAIR_KEY as KEY
from healer.plan import HttpSpec, RepairSpec
from healer.steps.http import send_http
from healer.steps.output_capture import StepOutput
from healer.steps.result import StepResult, jsonable
from healer.steps.sql import Sessions

__all__ = ["run_repair"]


async def run_repair(
    spec: RepairSpec,
    config: Config,
    sessions: Sessions,
    output: StepOutput,
    monitors: Mapping[str, TraceSource] | None = None,
) -> StepResult:
    """Confirm the check's findings now, then repair those keys only."""
    try:
        database = spec.database or config.check(spec.check).database
    except KeyError:
        raise StepFailed(f"check {spec.check!r} is not defined under checks") from None
    try:
        outcome = await run_once(config, spec.check, monitors)
    except CheckUnknown as exc:
        raise StepFailed(f"check {spec.check} could not establish the truth: {exc}") from None
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
    if spec.http is not None:
        return await _repair_http(spec.http, keys, result, sessions.dry_run, output)
    assert spec.query is not None  # one of query and http, by the rule's model
    res = await sessions.execute(database, spec.query, {**spec.params, "keys": keys}, spec.timeout)
    result["rowcount"] = res.rowcount
    result["transaction"] = sessions.transaction_of(own_transaction=False)
    if res.returned is not None:
        result["changed_keys"] = jsonable(res.returned)
    verb = "would change" if sessions.dry_run else "changed"
    output.system(f"repair on {database}: {verb} {res.rowcount} rows")
    return StepResult(result)


def with_key(spec: HttpSpec, key: Any) -> HttpSpec:
    """The request for one key: `{{ key }}` URL-quoted in the url; in the body, a value that
    is exactly `{{ key }}` becomes the key itself (numbers stay numbers)."""

    def put(value: Any) -> Any:
        if value == KEY:
            return key
        if isinstance(value, str):
            return value.replace(KEY, str(key))
        if isinstance(value, list):
            return [put(v) for v in value]
        if isinstance(value, dict):
            return {k: put(v) for k, v in value.items()}
        return value

    url = spec.url.replace(KEY, quote(str(key), safe=""))
    return spec.model_copy(update={"url": url, "body": put(spec.body)})


async def _repair_http(
    spec: HttpSpec, keys: list[Any], result: dict[str, Any], dry_run: bool, output: StepOutput
) -> StepResult:
    result["transaction"] = "none"
    if dry_run:
        output.system(f"dry run: would send {len(keys)} {spec.method} requests, one per key")
        result["requests"] = []
        return StepResult(result)
    answers: list[dict[str, Any]] = []
    result["requests"] = answers
    for key in keys:
        try:
            answers.append(await send_http(with_key(spec, key), output))
        except StepFailed as exc:
            answers.append({"key": jsonable(key), "error": str(exc), **exc.result})
            raise StepFailed(
                f"key {key!r}: {exc} ({len(answers) - 1} of {len(keys)} keys repaired before)",
                result=result,
            ) from None
    output.system(f"repair by http: {len(keys)} requests answered as expected")
    return StepResult(result)
