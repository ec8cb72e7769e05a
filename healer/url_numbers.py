"""Numbers in URLs (action ids, cursors, steps, limits), parsed one way by every route.

`str.isdigit` also accepts `²` and other digits that `int` refuses, and `int` of a very long
string raises: either would answer 500. Eighteen ASCII digits at most fit the journal's
bigint.
"""

from __future__ import annotations

__all__ = ["MAX_ID", "parse_number"]

MAX_ID = 10**18 - 1


def parse_number(value: str, maximum: int = MAX_ID) -> int | None:
    """`value` as an integer from 0 to `maximum`, or None when it is not one."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    number = int(value)
    return number if number <= maximum else None
