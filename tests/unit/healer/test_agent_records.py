"""An agent without journal access remembers the runs it took (so a redelivered message never
starts one twice) and forgets them once no message for them can come back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from healer.agents.worker import prune_run_records


def test_an_agent_keeps_a_week_of_run_records(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    old, new = runs / "1", runs / "2"
    old.write_text("token")
    new.write_text("token")
    week_ago = time.time() - 7 * 86400 - 60
    os.utime(old, (week_ago, week_ago))
    assert prune_run_records(tmp_path) == 1
    assert sorted(p.name for p in runs.iterdir()) == ["2"]
