"""Text from alerts and steps, made safe to print on an operator's terminal.

Labels, reasons, step errors and step output come from outside (an alert, a script): an ANSI
escape, a carriage return or a bidi override in them could clear the screen or rewrite what an
approver reads. `printable` shows every such character as an escape (`\\x1b`, `\\u202e`) and
leaves all other text, UTF-8 included, as it is.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls, DEL, C1 controls, and the Unicode bidi embeddings, overrides and isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, multiline: bool = False) -> str:
    """`text` with its control characters shown as escapes; `multiline` keeps `\\n` and `\\t`."""
    return (_CONTROL_KEEP_LINES if multiline else _CONTROL).sub(_escape, text)
