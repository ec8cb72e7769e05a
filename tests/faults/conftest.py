"""The fault, load and fuzz scenarios: real healer and exporter processes under kill -9,
outages, load and generated requests. Each prints its counts (`make faults` shows them) and
asserts on them. Small counts in `make test`; `TASKMEDIC_FAULTS=full` (`make faults`) runs the
full ones (tests/support/faults.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import ROOT, free_port
from tests.support.orphan_tasks import config_data


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def exporter_for(timeline: str, tmp_path: Path) -> Iterator[Any]:
    """`exporter_for(broker, backend, queues)` starts `taskmedic exporter` with an
    orphan_tasks check `timelines` of the `timeline` table (interval 0.5 s, grace 1 s) and
    returns its port and log; stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(broker: str, backend: str | None, queues: list[str]) -> tuple[int, Path]:
        port = free_port()
        data = config_data(timeline, broker, grace="1s", listen=f"127.0.0.1:{port}")
        data["celery"]["main"].update(backend=backend, queues=queues)
        path = tmp_path / "taskmedic.yaml"
        path.write_text(yaml.safe_dump(data))
        log = tmp_path / "exporter.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "healer.cli", "exporter", "--config", str(path)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=str(ROOT),
                )
            )
        return port, log

    yield start
    for p in procs:
        p.kill()
        p.wait(timeout=10)
