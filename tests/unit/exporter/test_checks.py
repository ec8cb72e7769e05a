"""Row timestamps of every common shape become UTC datetimes; a value that is no timestamp
is unknown."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from exporter.checks.base import to_utc
from exporter.errors import CheckUnknown

# --- orphan_rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (datetime(2024, 5, 1, 12, 0), datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (
            datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        ),
        (date(2024, 5, 1), datetime(2024, 5, 1, tzinfo=UTC)),
        (1714564800, datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (1714564800000, datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (Decimal("1714564800.5"), datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (None, None),
    ],
)
def test_row_timestamps_of_every_common_shape_become_utc(raw: Any, expected: Any) -> None:
    """Naive values are UTC; numbers are Unix seconds (milliseconds past 1e11)."""
    assert to_utc(raw) == expected


@pytest.mark.parametrize("raw", [True, "yesterday", b"\x00", [1]])
def test_a_value_that_is_no_timestamp_is_unknown(raw: Any) -> None:
    with pytest.raises(CheckUnknown, match="expected a timestamp"):
        to_utc(raw)
