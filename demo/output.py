"""The demo's own messages, written so that a dead reader never stops the shutdown.

`make demo 2>&1 | tee demo.log` then Ctrl-C: `tee` dies first and every later write raises
BrokenPipeError; a closed terminal (SIGHUP) gives EIO. A stream that failed once is dropped
and its descriptor pointed at /dev/null, so neither our next message nor the interpreter's
final flush can raise while the demo is still stopping what it started.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO

__all__ = ["say", "settle", "show"]

_dead: set[int] = set()


def _silence(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null: buffered text then goes nowhere, quietly."""
    with contextlib.suppress(OSError, ValueError):
        fd = stream.fileno()
        _dead.add(fd)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


def _write(stream: TextIO, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        if stream.fileno() in _dead:
            return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # EPIPE, EIO from a hung-up terminal, a closed file
        _silence(stream)


def show(text: str) -> None:
    """Write a block of text to stdout, or nothing once stdout is gone."""
    _write(sys.stdout, text if text.endswith("\n") else text + "\n")


def say(message: str) -> None:
    """One `[demo] ...` line."""
    show(f"[demo] {message}")


def settle() -> None:
    """Flush stdout and stderr before the interpreter does, silencing whichever fails."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            _silence(stream)
