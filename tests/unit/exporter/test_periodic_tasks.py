"""Periodic task config: a task of an undefined cluster is a located config error."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.base.errors import ConfigError
from tests.support.exporter_helpers import config_from


def test_a_periodic_task_of_an_undefined_cluster_is_a_located_config_error(
    tmp_path: Path,
) -> None:
    data = {
        "celery": {"main": {"broker": "redis://127.0.0.1:6379/0"}},
        "periodic_tasks": [{"cluster": "trmm", "task": "core.tasks.x", "expect_every": "3m"}],
    }
    with pytest.raises(ConfigError, match=r"taskmedic.yaml:\d+: periodic_tasks\[0\]\.cluster"):
        config_from(tmp_path, data)
