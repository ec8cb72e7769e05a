"""The fault, load and fuzz scenarios: real healer and exporter processes under kill -9,
outages, load and generated requests. Each prints its counts (`make faults` shows them) and
asserts on them. Small counts in `make test`; `TASKMEDIC_FAULTS=full` (`make faults`) runs the
full ones (tests/support/faults.py)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
