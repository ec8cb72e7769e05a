"""`printable`: what reaches an operator's terminal from alerts and steps."""

from __future__ import annotations

from healer.terminal import printable

LABEL = "\x1b[2J\x1b[1;1Hall good\r\u202eévité"
SHOWN = "\\x1b[2J\\x1b[1;1Hall good\\x0d\\u202eévité"


def test_printable_escapes_controls_and_bidi_and_keeps_text() -> None:
    assert printable(LABEL) == SHOWN
    assert printable("a\tb\nc\x7f\x85\u2066", multiline=True) == "a\tb\nc\\x7f\\x85\\u2066"
    assert printable("a\tb\nc") == "a\\x09b\\x0ac"
    assert printable("Zürich ✓ 東京") == "Zürich ✓ 東京"
