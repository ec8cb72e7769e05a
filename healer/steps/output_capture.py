"""Live output of a step: stdout and stderr as they come, appended to the journal in chunks.

A chunk is flushed when a newline arrives (everything up to the last newline, batched with
whatever came while the previous write was in flight), when 64 KiB piled up, or at the latest
one second after its first byte, so a partial line with no newline is readable within a second
too. Streams stay apart; each chunk is stamped with the time its first byte arrived.

Large output: the first cap/2 bytes (the head) are written live; after that only the last
cap/2 bytes are kept in a ring buffer and written when the step ends, after an explicit
`[… N bytes elided …]` marker on the `system` stream. The true byte count is kept in
`steps.output_bytes`. Memory stays bounded by the cap whatever the step prints, and bytes are
stored as they came (bytea): output that is not UTF-8 survives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol

from healer.errors import JournalUnavailable, LeaseLost
from healer.journal import executor as journal_executor
from healer.journal import logs

__all__ = ["FLUSH_AFTER", "FLUSH_BYTES", "JournalLogSink", "OutputChunk", "StepOutput"]

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024
FLUSH_AFTER = 1.0
# Pieces of the tail kept apart (a piece is a run of one stream): reads of one stream are
# appended to its last piece, so this only matters for streams that alternate byte by byte.
MAX_TAIL_PIECES = 1024


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: str  # stdout | stderr | system
    at: datetime
    data: bytes


class ChunkSink(Protocol):
    """Where flushed chunks go; `output_bytes` is the step's true count so far (or None)."""

    def __call__(
        self, chunks: Sequence[OutputChunk], output_bytes: int | None
    ) -> Awaitable[None]: ...


def elided_marker(n: int) -> bytes:
    return f"[… {n} bytes elided …]\n".encode()


class _Open:
    """Bytes of one stream not yet handed to the writer."""

    __slots__ = ("at", "buf", "since")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.since = 0.0  # monotonic time of the first byte in buf
        self.at = datetime.now(UTC)


class _Piece:
    """A run of one stream in the tail, grown in place: the tail costs its bytes, not an
    object per read (a step reading one byte at a time would otherwise keep a million)."""

    __slots__ = ("at", "buf", "stream")

    def __init__(self, stream: str, data: bytes) -> None:
        self.stream = stream
        self.at = datetime.now(UTC)
        self.buf = bytearray(data)


class StepOutput:
    """Collects one step's output and writes it through `sink` (use as `async with`).

    `feed()` is cheap and never waits: the head is at most cap/2 bytes and the ring another
    cap/2, so memory is bounded without slowing the step down. A sink that fails with
    `LeaseLost` or `JournalUnavailable` stops the writing (further output is counted, not
    stored) and is reported once through `on_error`.
    """

    def __init__(
        self,
        sink: ChunkSink,
        *,
        cap: int = 1 << 20,
        record_total: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if cap < 2:
            raise ValueError("output cap must be at least 2 bytes")
        self.cap = cap
        self._sink = sink
        self._record_total = record_total
        self._on_error = on_error
        self.total = 0  # true byte count of stdout + stderr
        self._head_left = cap // 2
        self._ring_limit = cap - cap // 2
        self._ring: deque[_Piece] = deque()
        self._ring_size = 0
        self._dropped = 0  # bytes between the head and the tail: counted, never stored
        self._open: dict[str, _Open] = {}
        self._ready: list[OutputChunk] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._failed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StepOutput:
        self._task = asyncio.create_task(self._flusher(), name="step-output-flusher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def feed(self, stream: str, data: bytes) -> None:
        """Bytes read from the step's `stream` (stdout or stderr), in the order read."""
        if not data:
            return
        self.total += len(data)
        if self._head_left > 0:
            head = data[: self._head_left]
            self._head_left -= len(head)
            self._to_open(stream, head)
            data = data[len(head) :]
        if data:
            self._to_ring(stream, data)

    def system(self, text: str) -> None:
        """A line of taskmedic's own (timeouts, signals, undo): written in order, never capped."""
        self._seal_all()
        line = text if text.endswith("\n") else text + "\n"
        self._ready.append(OutputChunk("system", datetime.now(UTC), line.encode()))
        self._wake.set()

    async def close(self) -> None:
        """Flush everything; the tail after its elision marker. Idempotent."""
        if self._closing:
            if self._task is not None:
                await self._task
            return
        self._seal_all()
        if self._dropped > 0:
            marker = elided_marker(self._dropped)
            self._ready.append(OutputChunk("system", datetime.now(UTC), marker))
        for piece in self._ring:
            for i in range(0, len(piece.buf), FLUSH_BYTES):
                data = bytes(piece.buf[i : i + FLUSH_BYTES])
                self._ready.append(OutputChunk(piece.stream, piece.at, data))
        self._ring.clear()
        self._ring_size = 0
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        else:  # never entered: write synchronously
            await self._write(self._take_ready())

    # -- internals ------------------------------------------------------------------------

    def _to_open(self, stream: str, data: bytes) -> None:
        now = time.monotonic()
        part = self._open.get(stream)
        if part is None or not part.buf:
            part = self._open[stream] = _Open()
            part.since = now
        part.buf += data
        # Whole 64 KiB pieces go now; then everything up to the last newline.
        while len(part.buf) >= FLUSH_BYTES:
            self._ready.append(OutputChunk(stream, part.at, bytes(part.buf[:FLUSH_BYTES])))
            del part.buf[:FLUSH_BYTES]
            part.at, part.since = datetime.now(UTC), now
        if b"\n" in data:
            cut = part.buf.rfind(b"\n") + 1
            if cut:
                self._ready.append(OutputChunk(stream, part.at, bytes(part.buf[:cut])))
                del part.buf[:cut]
                part.at, part.since = datetime.now(UTC), now
        self._wake.set()

    def _to_ring(self, stream: str, data: bytes) -> None:
        ring = self._ring
        if ring and ring[-1].stream == stream:
            ring[-1].buf += data
        else:
            ring.append(_Piece(stream, data))
        self._ring_size += len(data)
        while len(ring) > 1 and (
            self._ring_size - len(ring[0].buf) >= self._ring_limit or len(ring) > MAX_TAIL_PIECES
        ):
            gone = ring.popleft()
            self._ring_size -= len(gone.buf)
            self._dropped += len(gone.buf)
        excess = self._ring_size - self._ring_limit
        if excess > 0:
            del ring[0].buf[:excess]  # O(1): a bytearray moves its start, not its bytes
            self._ring_size -= excess
            self._dropped += excess

    def _seal(self, stream: str) -> None:
        part = self._open.get(stream)
        if part is not None and part.buf:
            self._ready.append(OutputChunk(stream, part.at, bytes(part.buf)))
            part.buf.clear()

    def _seal_all(self) -> None:
        for stream in sorted(self._open, key=lambda s: self._open[s].since):
            self._seal(stream)

    def _seal_overdue(self, now: float) -> float | None:
        """Seal partial lines older than FLUSH_AFTER; returns seconds until the next is due."""
        due: float | None = None
        for stream, part in self._open.items():
            if not part.buf:
                continue
            left = part.since + FLUSH_AFTER - now
            if left <= 0:
                self._seal(stream)
            else:
                due = left if due is None else min(due, left)
        return due

    def _take_ready(self) -> list[OutputChunk]:
        """Ready chunks, neighbours of the same stream merged up to FLUSH_BYTES."""
        out: list[OutputChunk] = []
        for c in self._ready:
            last = out[-1] if out else None
            if (
                last is not None
                and last.stream == c.stream
                and c.stream != "system"
                and len(last.data) + len(c.data) <= FLUSH_BYTES
            ):
                out[-1] = OutputChunk(last.stream, last.at, last.data + c.data)
            else:
                out.append(c)
        self._ready.clear()
        return out

    async def _flusher(self) -> None:
        while True:
            due = self._seal_overdue(time.monotonic())
            if self._ready:
                await self._write(self._take_ready())
                continue
            if self._closing:
                return
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            try:  # not asyncio.wait_for: see healer.executor.claims.wait_event
                await asyncio.wait({waiter}, timeout=due)
            finally:
                waiter.cancel()

    async def _write(self, chunks: list[OutputChunk]) -> None:
        if self._failed is not None or (not chunks and not self._record_total):
            return
        try:
            await self._sink(chunks, self.total if self._record_total else None)
        except (LeaseLost, JournalUnavailable) as exc:
            self._failed = exc
            log.warning("step output no longer written: %s", exc)
            if self._on_error is not None:
                self._on_error(exc)


class JournalLogSink:
    """Writes chunks of one step to `log_chunks`, fenced, with `taskmedic_log` notified."""

    def __init__(
        self, journal: journal_executor.Journal, fence: journal_executor.Fence, step_idx: int
    ) -> None:
        self._journal = journal
        self._fence = fence
        self._step_idx = step_idx

    async def __call__(self, chunks: Sequence[OutputChunk], output_bytes: int | None) -> None:
        if not chunks and output_bytes is None:
            return
        action_id = self._fence.action_id

        async def write(conn: journal_executor.Conn) -> None:
            await logs.append(conn, action_id, self._step_idx, chunks, output_bytes)

        await self._journal.run(write, fence=self._fence)
