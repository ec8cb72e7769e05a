"""The journal's notification channels are named once: no query of the healer names a
channel itself."""

from __future__ import annotations

import re
from pathlib import Path

from healer.journal import channels

NOTIFIED = re.compile(r"pg_notify\(\s*'([^']*)'")


def test_no_query_of_the_healer_names_a_channel_itself() -> None:
    """Named queries notify through `channels.notify`, never by a literal name of their own."""
    folder = Path(channels.__file__).parent / "sql"
    for path in folder.glob("*.sql"):
        assert not NOTIFIED.findall(path.read_text()), path.name
