"""A brake on guessing credentials: wrong ones are counted per client address and in total.

A sliding window of `window` seconds: a client with `per_client` wrong credentials in it, or
the healer with `total` from everybody, is refused (429 with Retry-After) until the oldest of
them leaves the window, and its credentials are not even checked, so a refusal costs the
same whatever was sent. Only wrong credentials count: a right one never uses up the budget,
and a refusal does not lengthen it. A small class of our own rather than a library: the state
is two kinds of deques in one process, checked and updated without an await in between, so
concurrent requests cannot slip past the limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["FailureLimiter"]


class FailureLimiter:
    """Counts wrong credentials per client and in total over a sliding window."""

    def __init__(
        self,
        per_client: int,
        total: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.total = total
        self.window = window
        self._clock = clock
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def _prune(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until `client` may try again, or None when it may try now."""
        now = self._clock()
        self._prune(self._all, now)
        waits = []
        if len(self._all) >= self.total:
            waits.append(self._all[0] + self.window - now)
        mine = self._clients.get(client)
        if mine is not None:
            self._prune(mine, now)
            if not mine:
                del self._clients[client]
            elif len(mine) >= self.per_client:
                waits.append(mine[0] + self.window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, client: str) -> None:
        """`client` sent wrong credentials."""
        now = self._clock()
        self._all.append(now)
        self._clients.setdefault(client, deque()).append(now)
        if len(self._clients) > self.total:  # forget clients whose failures all expired
            for name in [c for c, t in self._clients.items() if t[-1] <= now - self.window]:
                del self._clients[name]
