"""A plain Server-Sent Events reader for the log benchmarks: each `data:` line with the time it
arrived, so a line's delivery latency is `arrival - the stamp the step printed in it`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import aiohttp

STAMP = re.compile(rb"^T=(\d+\.\d+) ")


@dataclass
class Followed:
    """What one follower saw: stamped lines' latencies, every line count, the end event."""

    latencies: list[float] = field(default_factory=list)
    lines: int = 0
    stamped: int = 0
    bytes: int = 0
    end: str | None = None
    connected_at: float = 0.0
    status: int = 0


async def follow(
    session: aiohttp.ClientSession, url: str, *, max_seconds: float, not_before: float = 0.0
) -> Followed:
    """Follow `url` until `event: end` or `max_seconds`; stamped lines older than
    `not_before` (printed before this follower was connected) are counted but not timed."""
    out = Followed()
    deadline = time.monotonic() + max_seconds
    timeout = aiohttp.ClientTimeout(total=max_seconds + 5, sock_read=max_seconds + 5)
    async with session.get(url, headers={"Accept": "text/event-stream"}, timeout=timeout) as resp:
        out.status = resp.status
        out.connected_at = time.time()
        if resp.status != 200:
            return out
        event = b""
        while time.monotonic() < deadline:
            raw = await resp.content.readline()
            if not raw:
                break
            now = time.time()
            line = raw.rstrip(b"\r\n")
            if not line:
                event = b""
                continue
            if line.startswith(b"event:"):
                event = line[6:].strip()
                continue
            if not line.startswith(b"data:"):
                continue
            data = line[5:]
            if data.startswith(b" "):
                data = data[1:]
            if event == b"end":
                out.end = data.decode(errors="replace")
                break
            if event not in (b"stdout", b"stderr") or not data:
                continue  # a chunk ending in a newline ends with an empty data line
            out.lines += 1
            out.bytes += len(data) + 1
            m = STAMP.match(data)
            if m:
                out.stamped += 1
                stamp = float(m.group(1))
                if stamp >= not_before:
                    out.latencies.append(now - stamp)
    return out
