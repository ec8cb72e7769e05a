"""Background loops that never stop silently.

The executor's claim, listen, sweep and cancel loops and the log hub's listener each handle
the errors they expect (an unreachable journal) themselves. Anything else is a bug or a
journal that refuses what it is asked: `supervise` logs it with its traceback, counts it in
`taskmedic_healer_loop_failures_total{loop}`, marks the loop down
(`taskmedic_healer_loop_up{loop}` 0, and `/readyz` 503 naming it) and starts the loop again
after a backoff that doubles up to `MAX_BACKOFF`. A process whose loop is dead would otherwise
look healthy while it claims nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

__all__ = ["FIRST_BACKOFF", "MAX_BACKOFF", "LoopHealth", "supervise"]

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 30.0


class LoopHealth:
    """Which supervised loops of this process are down now, and why (for /readyz)."""

    def __init__(self, up: Gauge, failures: Counter) -> None:
        self._up = up
        self._failures = failures
        self._down: dict[str, str] = {}

    def running(self, name: str) -> None:
        self._down.pop(name, None)
        self._up.labels(name).set(1)

    def failed(self, name: str, exc: BaseException) -> None:
        # The type only: /readyz is public, and the log has the message and the traceback.
        self._down[name] = type(exc).__name__
        self._up.labels(name).set(0)
        self._failures.labels(name).inc()

    def stopped(self, name: str) -> None:
        self._down.pop(name, None)
        with contextlib.suppress(KeyError):  # never started in this registry
            self._up.remove(name)

    def down(self) -> dict[str, str]:
        """Loop name -> the type of the error that stopped it, for every loop waiting to start
        again."""
        return dict(self._down)


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    health: LoopHealth | None,
    *,
    stopping: asyncio.Event | None = None,
    first_backoff: float = FIRST_BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> None:
    """Run `body` until it returns (its owner is stopping) or is cancelled; start it again,
    after a growing pause, whenever it raises. `stopping` set ends the pause and the loop."""
    loop = asyncio.get_running_loop()
    backoff = first_backoff
    try:
        while True:
            if health is not None:
                health.running(name)
            started = loop.time()
            try:
                await body()
            except Exception as exc:  # logged, counted and started again: never hidden
                log.exception("loop %s failed; starting it again in %.1fs", name, backoff)
                if health is not None:
                    health.failed(name, exc)
            else:
                return
            if loop.time() - started > max_backoff:
                backoff = first_backoff  # it ran well for a while: a new failure starts over
            if stopping is None:
                await asyncio.sleep(backoff)
            else:
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation.
                waiter = asyncio.ensure_future(stopping.wait())
                try:
                    await asyncio.wait({waiter}, timeout=backoff)
                finally:
                    waiter.cancel()
                if stopping.is_set():
                    return
            backoff = min(2 * backoff, max_backoff)
    finally:
        if health is not None:
            health.stopped(name)
