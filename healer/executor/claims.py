"""The executor loop: claims pending actions from the journal, starts their runs, sweeps.

Claiming: `FOR UPDATE SKIP LOCKED` under a short advisory lock, respecting each rule's
`max_concurrent`; the claim sets `running`, a lease and a new attempt token (the fencing token,
see `healer.journal.executor`) in one transaction with its event. Executors are woken by
`LISTEN taskmedic_actions` on a dedicated connection and also poll every `poll_interval`, so
a lost notification (or a journal restart) delays an action, never strands it. Cancel requests
for running actions arrive the same way, on `taskmedic_cancel`, and by the same polling.

Rescue: every executor also sweeps on a timer (`healer.executor.rescue`).

`stop(grace)`: no new claims; running actions get `grace` seconds to finish; the ones still
running are then stopped (their process groups signalled) and recorded `interrupted` with the
on_interrupt decision applied at once (a retry goes back to `pending` for another replica),
their leases released. The journal never shows an action `running` that nobody runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from exporter.checks import TraceSource
from exporter.config import Config
from healer.agents.dispatch import Agents
from healer.agents.replies import consume_replies
from healer.agents.settings import AgentsSettings
from healer.errors import JournalUnavailable
from healer.executor.attempt import ActionRun, RunSettings
from healer.executor.rescue import sweep
from healer.journal import channels
from healer.journal import executor as journal_executor
from healer.metrics import HealerMetrics
from healer.steps import CeleryApps
from healer.supervise import supervise

__all__ = ["Executor"]

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, seconds: float | None) -> None:
    """Wait for `event` at most `seconds`.

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that arrives as the
    event fires, and a loop cancelled at stop() would then run on.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


def default_owner() -> str:
    """Unique per process and start: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Executor:
    """Runs the journal's pending actions; start() it, stop(grace) it."""

    def __init__(
        self,
        dsn: str,
        config: Config,
        metrics: HealerMetrics,
        *,
        owner: str | None = None,
        concurrency: int = 4,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        dry_run: bool = False,
        output_cap: int = 1 << 20,
        approval_timeout: float = 3600.0,
        sweep_interval: float | None = None,
        monitors: Mapping[str, TraceSource] | None = None,
        agents: AgentsSettings | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease <= 0 or poll_interval <= 0:
            raise ValueError("lease and poll_interval must be positive")
        self.dsn = dsn
        self.config = config
        self.metrics = metrics
        self.owner = owner or default_owner()
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.dry_run = dry_run
        self.output_cap = output_cap
        self.approval_timeout = approval_timeout
        self.sweep_interval = sweep_interval or min(lease / 3, max(poll_interval, 1.0))
        self.monitors = monitors
        self._pool: AsyncConnectionPool[journal_executor.Conn] | None = None
        self._journal: journal_executor.Journal | None = None
        self._celery = CeleryApps(config)
        self._agents = (
            Agents(agents, metrics, resume_timeout=approval_timeout) if agents is not None else None
        )
        self._runs: dict[int, tuple[ActionRun, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._check_cancels = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()  # ends a supervised loop's pause after a failure
        self._claimer: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def running(self) -> frozenset[int]:
        """Ids of the actions this executor is running now."""
        return frozenset(self._runs)

    async def start(self) -> None:
        """Connect to the journal and start claiming, listening and sweeping."""
        pool: AsyncConnectionPool[journal_executor.Conn] = AsyncConnectionPool(
            self.dsn,
            connection_class=psycopg.AsyncConnection[dict[str, Any]],
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=1,
            max_size=2 * self.concurrency + 2,
            open=False,
            check=AsyncConnectionPool.check_connection,
            name=f"executor-{self.owner}",
        )
        try:
            await pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            await pool.close()
            raise JournalUnavailable(f"the journal cannot be reached: {exc}") from exc
        self._pool = pool
        # Writes retry connection problems for half a lease; past that the lease is in doubt.
        self._journal = journal_executor.Journal(pool, retry_for=self.lease / 2)
        self._claimer = self._supervised("executor-claim", self._claim_loop)
        self._background = [
            self._supervised("executor-listen", self._listen_loop),
            self._supervised("executor-sweep", self._sweep_loop),
            self._supervised("executor-cancels", self._cancel_loop),
        ]
        if self._agents is not None:
            agents, journal = self._agents, self._journal
            self._background += [
                self._supervised(
                    "agents-replies",
                    lambda: consume_replies(agents.settings, journal, agents.app),
                ),
                self._supervised("agents-health", agents.watch),
            ]
        log.info(
            "executor %s started (concurrency %d, lease %gs)",
            self.owner,
            self.concurrency,
            self.lease,
        )

    async def stop(self, grace: float) -> None:
        """Stop claiming; give running actions `grace` seconds, then interrupt them."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        if self._claimer is not None:
            await self._claimer  # never cancelled mid-claim: a claimed action must get a run
        tasks = [task for _, task in self._runs.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            for run, task in list(self._runs.values()):
                if task in pending:
                    run.interrupt("shutdown")
            if pending:
                await asyncio.wait(pending)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await asyncio.to_thread(self._celery.close)
        if self._agents is not None:
            await asyncio.to_thread(self._agents.close)
        log.info("executor %s stopped", self.owner)

    async def sweep(self) -> list[journal_executor.Settled]:
        """One sweep now: expired leases and expired approvals. Returns what it settled."""
        settled = await sweep(self._need_journal(), self.owner, self.approval_timeout, self.metrics)
        if any(s.state == "pending" for s in settled):
            self._wake.set()
        return settled

    # -- loops ----------------------------------------------------------------------------

    def _supervised(self, name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """A loop started again after an unexpected error, and counted (healer.supervise)."""
        loop = supervise(name, body, self.metrics.loops, stopping=self._stop_requested)
        return asyncio.create_task(loop, name=name)

    def _need_journal(self) -> journal_executor.Journal:
        if self._journal is None:
            raise RuntimeError("the executor is not started")
        return self._journal

    async def _claim_loop(self) -> None:
        journal = self._need_journal()
        settings = RunSettings(
            journal=journal,
            config=self.config,
            metrics=self.metrics,
            celery=self._celery,
            owner=self.owner,
            lease=self.lease,
            dry_run=self.dry_run,
            output_cap=self.output_cap,
            monitors=self.monitors,
            agents=self._agents,
        )
        while not self._stopping:
            self._wake.clear()
            while not self._stopping and len(self._runs) < self.concurrency:
                try:
                    claim = await journal.run(
                        lambda c: journal_executor.claim(c, self.owner, self.lease)
                    )
                except JournalUnavailable as exc:
                    log.warning("executor %s cannot claim: %s", self.owner, exc)
                    break
                if claim is None:
                    break
                self._start(ActionRun(claim, settings))
            await wait_event(self._wake, self.poll_interval)

    def _start(self, run: ActionRun) -> None:
        action_id = run.claim.id
        task = asyncio.create_task(run.run(), name=f"action-{action_id}")
        self._runs[action_id] = (run, task)
        log.info(
            "running action %s (rule %s, attempt %d)", action_id, run.claim.rule, run.claim.attempt
        )

        def done(t: asyncio.Task[None]) -> None:
            self._runs.pop(action_id, None)
            self._wake.set()  # a slot is free
            if not t.cancelled() and t.exception() is not None:
                log.error("action %s: the run failed", action_id, exc_info=t.exception())

        task.add_done_callback(done)

    async def _listen_loop(self) -> None:
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    await channels.listen(conn, channels.ACTIONS, channels.CANCEL)
                    self._wake.set()  # whatever became pending while nobody listened
                    async for note in conn.notifies():
                        if note.channel == channels.ACTIONS:
                            self._wake.set()
                        elif note.payload.isdigit() and int(note.payload) in self._runs:
                            self._check_cancels.set()
            except psycopg.OperationalError as exc:
                log.warning("executor %s: LISTEN connection lost: %s", self.owner, exc)
            await asyncio.sleep(self.poll_interval)

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            try:
                await self.sweep()
            except JournalUnavailable as exc:
                log.warning("executor %s cannot sweep: %s", self.owner, exc)
            await asyncio.sleep(self.sweep_interval)

    async def _cancel_loop(self) -> None:
        """Cancel requests: on a `taskmedic_cancel` notification, and every poll_interval."""
        journal = self._need_journal()
        while not self._stopping:
            await wait_event(self._check_cancels, self.poll_interval)
            self._check_cancels.clear()
            ids = list(self._runs)
            if not ids:
                continue
            try:
                wanted = await journal.run(partial(journal_executor.cancel_requested, ids=ids))
            except JournalUnavailable as exc:
                log.warning("executor %s cannot read cancel requests: %s", self.owner, exc)
                continue
            for action_id in wanted:
                entry = self._runs.get(action_id)
                if entry is not None:
                    entry[0].interrupt("cancel")
