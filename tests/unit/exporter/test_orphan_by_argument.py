"""orphan_tasks matched by argument: the config must say which argument."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.timesketch import config


def test_a_match_without_position_or_keyword_is_a_config_error(tmp_path: Path) -> None:
    from exporter.base.errors import ConfigError

    with pytest.raises(ConfigError, match=r"checks\[0\]\.match.*position.*keyword"):
        config(tmp_path, "postgresql://x@127.0.0.1/x", "redis://127.0.0.1:6379/0")
