"""The background collection: every check on its own interval, results kept for `/metrics`.

Why in the background: a scrape must never wait on a database or a broker, and one slow or
failing check must not hold up another. Each check is its own asyncio task; it runs, records
its outcome (or its error) in a `CheckState`, and sleeps until its next turn. A collection
that overruns its interval delays only its own next turn. `/metrics` reads the states as they
are; the collector renders them.

A failed collection keeps nothing from before: the check reads as down (`taskmedic_check_up`
0, no finding exported) until a collection succeeds again, and an orphan check needs two
successful observations in a row again before its count is known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.checks import Check, CheckContext, CheckOutcome, build_check
from exporter.config import Config, OrphanTasksCheck
from exporter.databases import Databases
from exporter.errors import CheckUnknown

if TYPE_CHECKING:
    from exporter.celery_state import ClusterMonitor, ClusterSnapshot

__all__ = ["CheckState", "Runner"]

log = logging.getLogger(__name__)

# Beyond a check's own timeout (which the database and Celery calls enforce themselves), the
# longest a collection may take before the runner gives up on it: a guard against bugs.
GUARD = 15.0
# How long an orphan_tasks check waits for its cluster's event stream before its first run.
FIRST_CONTACT = 5.0


@dataclass
class CheckState:
    """What is known about one check right now (read by the collector and the landing page)."""

    name: str
    type: str
    database: str
    interval: float
    timeout: float
    help: str | None = None
    up: bool | None = None  # None: no collection has finished yet
    outcome: CheckOutcome | None = None  # the last successful collection
    error: str | None = None  # why the last collection failed
    duration: float | None = None  # seconds the last collection took, success or not
    last_success: float | None = None  # Unix time
    last_attempt: float | None = None  # Unix time
    collections: int = 0  # finished collections, success or not


class Runner:
    """Runs every configured check in the background and follows every Celery cluster.

    Monitors passed in are used as they are (started and stopped by the caller); otherwise the
    runner creates one per configured cluster, starts it and stops it.
    """

    def __init__(
        self, config: Config, *, monitors: Mapping[str, ClusterMonitor] | None = None
    ) -> None:
        self.config = config
        self._given_monitors = monitors
        self._monitors: dict[str, ClusterMonitor] = dict(monitors or {})
        self._databases = Databases(config.databases)
        self._checks: dict[str, Check] = {c.name: build_check(c, config) for c in config.checks}
        self._states = {
            c.name: CheckState(
                c.name,
                c.type,
                c.database,
                config.interval_of(c),
                config.timeout_of(c),
                c.help,
            )
            for c in config.checks
        }
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def states(self) -> list[CheckState]:
        """Every check's state, in config order."""
        return list(self._states.values())

    def state(self, name: str) -> CheckState:
        return self._states[name]

    def clusters(self, now: float | None = None) -> list[ClusterSnapshot]:
        """Every cluster's broker and worker liveness as of `now` (computed now, never stale)."""
        return [m.snapshot(now) for m in self._monitors.values()]

    async def start(self) -> None:
        """Start the cluster monitors and one collection task per check; returns at once."""
        if self._given_monitors is None:
            from exporter.celery_state import ClusterMonitor

            for name, cfg in self.config.celery.items():
                tasks = [t for t in self.config.periodic_tasks if t.cluster == name]
                monitor = await asyncio.to_thread(ClusterMonitor, name, cfg, tasks)
                monitor.start()
                self._monitors[name] = monitor
        ctx = CheckContext(self._databases, self._monitors, self._broker_up)
        self._tasks = [
            asyncio.create_task(
                self._loop(check, ctx, self._wake_on_death(check)), name=f"taskmedic-check-{name}"
            )
            for name, check in self._checks.items()
        ]

    def _wake_on_death(self, check: Check) -> asyncio.Event | None:
        """For an orphan_tasks check: an event set when its cluster's broker signal confirms a
        worker dead, so the tasks it was running are looked at now, not at the next turn."""
        if not isinstance(check.spec, OrphanTasksCheck):
            return None
        monitor = self._monitors.get(check.spec.celery)
        if monitor is None:
            return None
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        monitor.on_worker_gone(lambda _hostname: loop.call_soon_threadsafe(wake.set))
        return wake

    async def stop(self) -> None:
        """Cancel the collections, stop our own monitors, close the database connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._given_monitors is None:
            monitors, self._monitors = list(self._monitors.values()), {}
            await asyncio.gather(*(asyncio.to_thread(m.stop) for m in monitors))
        self._databases.close()

    async def collect(self, name: str) -> CheckState:
        """Collect one check now (outside its schedule) and return its new state."""
        ctx = CheckContext(self._databases, self._monitors, self._broker_up)
        await self._collect(self._checks[name], ctx)
        return self._states[name]

    def _broker_up(self, cluster: str) -> bool:
        monitor = self._monitors.get(cluster)
        return monitor is not None and monitor.snapshot().broker_up

    async def _loop(self, check: Check, ctx: CheckContext, wake: asyncio.Event | None) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(check.spec, OrphanTasksCheck):
            await self._first_contact(check.spec.celery, loop.time() + FIRST_CONTACT)
        next_at = loop.time()
        again = False  # a worker died: the observation just made needs its second at once
        while True:
            await self._collect(check, ctx)
            if again:
                again = False
                continue
            next_at = max(next_at + check.interval, loop.time())
            if wake is None:
                await asyncio.sleep(next_at - loop.time())
            elif await _woken(wake, next_at - loop.time()):
                # An orphan needs two observations in a row: make both now.
                wake.clear()
                again, next_at = True, loop.time()

    async def _first_contact(self, cluster: str, until: float) -> None:
        """Give a freshly started event stream a moment to connect, so that the first
        collection does not report a broker that simply was not reached yet."""
        loop = asyncio.get_running_loop()
        while not self._broker_up(cluster) and loop.time() < until:  # noqa: ASYNC110 - set by a thread
            await asyncio.sleep(0.1)

    async def _collect(self, check: Check, ctx: CheckContext) -> None:
        state = self._states[check.name]
        started, t0 = time.time(), time.perf_counter()
        try:
            async with asyncio.timeout(check.timeout + GUARD):
                outcome = await check.collect(ctx)
        except CheckUnknown as exc:
            self._failed(check, state, str(exc))
        except TimeoutError:
            self._failed(check, state, f"collection took longer than {check.timeout + GUARD:g}s")
        except Exception as exc:
            # A bug, not an outage: logged with its traceback and shown as the check's error,
            # and the other checks and this one's next turn go on.
            log.exception("check %s: unexpected error", check.name)
            self._failed(check, state, f"internal error: {type(exc).__name__}: {exc}")
        else:
            if state.up is False:
                log.info("check %s: collecting again", check.name)
            state.up, state.outcome, state.error = True, outcome, None
            state.last_success = time.time()
        finally:
            state.duration = time.perf_counter() - t0
            state.last_attempt = started
            state.collections += 1

    def _failed(self, check: Check, state: CheckState, error: str) -> None:
        # Errors reach the public `/` page and the log: whatever raised them, no secret of
        # any configured database or cluster may show.
        for database in self.config.databases.values():
            error = database.scrub(error)
        for cluster in self.config.celery.values():
            error = cluster.scrub(error)
        if state.up is not False or state.error != error:
            log.warning("check %s: cannot tell: %s", check.name, error)
        check.reset()
        state.up, state.error = False, error


async def _woken(wake: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True as soon as `wake` is set, False when the time is up."""
    try:
        async with asyncio.timeout(delay):
            await wake.wait()
    except TimeoutError:
        return False
    return True
