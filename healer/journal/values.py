"""Values the journal can hold, whatever a step handed back.

A step's result, error and the reasons built from them carry text from outside (a bytea a
statement returned, a task's result, an HTTP answer, a script's words). PostgreSQL's text and
jsonb cannot hold NUL, UTF-8 has no unpaired surrogates and JSON has no NaN or Infinity; any
of them would make the write fail and strand the action. `storable` shows NUL as the visible
escape `\\u0000` and a surrogate as `\\udcxx`, turns a non-finite number into its name, and
leaves every other value as it is, in strings, keys and nested values alike.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["storable"]


def _text(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "\\u0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def storable(value: Any) -> Any:
    """`value` as text or jsonb the journal accepts (see the module docstring)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_text(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return _text(str(value))
