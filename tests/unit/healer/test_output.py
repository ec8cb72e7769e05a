"""StepOutput's chunking rules, with an in-memory sink in place of the journal (fast, no I/O).

The journal side of the same behaviour is covered end to end in test_output_capture.py.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Sequence

import pytest

from healer.errors import LeaseLost
from healer.steps.output_capture import FLUSH_BYTES, OutputChunk, StepOutput
from tests.support.journal_helpers import until


class ListSink:
    """Records every write: the chunks and the byte count reported with them."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.writes: list[tuple[list[OutputChunk], int | None]] = []
        self.fail_with = fail_with

    async def __call__(self, chunks: Sequence[OutputChunk], output_bytes: int | None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append((list(chunks), output_bytes))

    @property
    def chunks(self) -> list[OutputChunk]:
        return [c for w, _ in self.writes for c in w]

    def stream(self, name: str) -> bytes:
        return b"".join(c.data for c in self.chunks if c.stream == name)


async def test_a_complete_line_is_written_without_waiting_for_the_step_to_end() -> None:
    sink = ListSink()
    async with StepOutput(sink) as out:
        out.feed("stdout", b"hello\nwor")
        await until(lambda: asyncio.sleep(0, sink.stream("stdout")), 2, "the line")
        assert sink.stream("stdout") == b"hello\n"  # the partial line waits for its newline
    assert sink.stream("stdout") == b"hello\nwor"


async def test_a_partial_line_is_written_after_at_most_a_second() -> None:
    sink = ListSink()
    async with StepOutput(sink) as out:
        out.feed("stderr", b"no newline yet")
        await until(lambda: asyncio.sleep(0, sink.stream("stderr")), 3, "the partial line")
        assert sink.stream("stderr") == b"no newline yet"


async def test_64_kib_without_newline_is_written_in_pieces_of_at_most_64_kib() -> None:
    sink = ListSink()
    async with StepOutput(sink, cap=10 * FLUSH_BYTES) as out:
        out.feed("stdout", b"x" * (3 * FLUSH_BYTES + 10))
        await until(
            lambda: asyncio.sleep(0, len(sink.stream("stdout")) >= 3 * FLUSH_BYTES), 2, "3 pieces"
        )
    assert all(len(c.data) <= FLUSH_BYTES for c in sink.chunks)
    assert sink.stream("stdout") == b"x" * (3 * FLUSH_BYTES + 10)


async def test_streams_are_kept_apart_and_each_in_order() -> None:
    sink = ListSink()
    expected = {"stdout": b"", "stderr": b""}
    async with StepOutput(sink) as out:
        for i in range(500):
            stream = "stdout" if i % 3 else "stderr"
            line = f"{stream} {i}\n".encode()
            expected[stream] += line
            out.feed(stream, line)
            if i % 50 == 0:
                await asyncio.sleep(0)
    assert sink.stream("stdout") == expected["stdout"]
    assert sink.stream("stderr") == expected["stderr"]
    for stream in ("stdout", "stderr"):
        stamps = [c.at for c in sink.chunks if c.stream == stream]
        assert stamps == sorted(stamps)


async def test_the_cap_keeps_head_and_tail_around_an_elision_marker() -> None:
    """cap 100: the first 50 and the last 50 bytes, the marker counts the 900 in between."""
    data = bytes(range(256)) * 4  # 1024 bytes, every value
    fed = {"stdout": b"", "stderr": b""}
    sink = ListSink()
    async with StepOutput(sink, cap=100) as out:
        for n, i in enumerate(range(0, len(data), 7)):  # odd-sized reads, alternating streams
            stream = "stdout" if n % 2 == 0 else "stderr"
            fed[stream] += data[i : i + 7]
            out.feed(stream, data[i : i + 7])
    assert out.total == 1024
    kinds = [c.stream for c in sink.chunks]
    marker_at = kinds.index("system")
    assert kinds.count("system") == 1
    assert sink.chunks[marker_at].data == "[… 924 bytes elided …]\n".encode()
    before, after = sink.chunks[:marker_at], sink.chunks[marker_at + 1 :]
    assert sum(len(c.data) for c in before) == 50
    assert sum(len(c.data) for c in after) == 50
    for stream, whole in fed.items():
        head = b"".join(c.data for c in before if c.stream == stream)
        tail = b"".join(c.data for c in after if c.stream == stream)
        assert whole.startswith(head)
        assert whole.endswith(tail)
    assert b"".join(c.data for c in after)[-7:] == data[-7:]  # the very last bytes survive
    assert sink.writes[-1][1] == 1024  # the true count, reported with the last write


async def test_output_within_the_cap_is_kept_whole_without_a_marker() -> None:
    sink = ListSink()
    async with StepOutput(sink, cap=100) as out:
        out.feed("stdout", b"a" * 90)
    assert sink.stream("stdout") == b"a" * 90
    assert not sink.stream("system")


async def test_non_utf8_bytes_are_kept_as_they_came() -> None:
    sink = ListSink()
    async with StepOutput(sink) as out:
        out.feed("stdout", b"\xff\xfe\x80 caf\xe9\n\x00end")
    assert sink.stream("stdout") == b"\xff\xfe\x80 caf\xe9\n\x00end"


async def test_system_lines_are_written_in_order_with_the_output() -> None:
    sink = ListSink()
    async with StepOutput(sink) as out:
        out.feed("stdout", b"before (partial)")
        out.system("timed out")
        out.feed("stdout", b"after\n")
    assert [(c.stream, c.data) for c in sink.chunks] == [
        ("stdout", b"before (partial)"),
        ("system", b"timed out\n"),
        ("stdout", b"after\n"),
    ]


async def test_a_lost_lease_stops_the_writing_and_is_reported_once() -> None:
    errors: list[BaseException] = []
    sink = ListSink(fail_with=LeaseLost("taken over"))
    async with StepOutput(sink, on_error=errors.append) as out:
        out.feed("stdout", b"one\n")
        await until(lambda: asyncio.sleep(0, errors), 2, "the error")
        out.feed("stdout", b"two\n")
    assert len(errors) == 1
    assert isinstance(out.failed, LeaseLost)
    assert out.total == 8


def test_a_cap_below_two_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        StepOutput(ListSink(), cap=1)


async def test_the_tail_of_one_byte_reads_costs_about_its_size_in_memory() -> None:
    """A step whose output arrives one byte at a time (a slow pipe, an unbuffered printer)
    keeps a tail of cap/2 bytes, not an object per read."""
    cap = 64 * 1024
    sink = ListSink()
    tracemalloc.start()
    try:
        async with StepOutput(sink, cap=cap) as out:
            for i in range(4 * cap):
                out.feed("stdout", b"xy"[i % 2 : i % 2 + 1])
            tail_memory = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert tail_memory < 4 * cap
    after = sink.stream("stdout")[cap // 2 :]
    assert after == b"xy" * (cap // 4)
    assert b"elided" in sink.stream("system")
