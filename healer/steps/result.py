"""What a step hands back to the executor (a failure is `healer.errors.StepFailed`)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass, field
from typing import Any

# How much of a step's returned data the journal keeps (keys, RETURNING rows, a task result).
MAX_ITEMS = 1000
MAX_REPR = 4096


@dataclass
class StepResult:
    """`result` is stored as `steps.result` (JSON); `skipped` means not run (dry run)."""

    result: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    skipped: bool = False


def jsonable(value: Any) -> Any:
    """A JSON-safe rendering of database values (keys keep their type where JSON has one)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value[:MAX_ITEMS]]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)[:MAX_REPR].decode("utf-8", "backslashreplace")
    return short_repr(value)


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + f"… ({len(text)} chars)"
