"""Running a script step on other hosts: the healer's side of a host run.

For each host the step (or its undo) names, a `pending` host run is written under the action's
fence before anything is sent; a batch is then marked `sent` (with a deadline: the step's
timeout and kill grace plus `agents.start_timeout`) and its messages published on the hosts'
queues. The healer polls the journal for the batch's runs, turning runs past their deadline
into `timed_out` and runs whose agent stopped renewing into `interrupted`, and writes each
host's progress as a system line of the step. After each batch it counts failed hosts: past
`tolerance` the hosts not yet run are `skipped` and the step fails; after a batch holding a
host of `pause_after` it waits until somebody resumes it.

When the step is stopped (cancel, shutdown, a lost lease) every open run is closed in the
journal and a stop is broadcast, so agents kill what they run; an agent that misses the
broadcast learns it at its next renewal, which the journal refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from celery import Celery

from healer.agents.settings import AgentsSettings
from healer.agents.transport import (
    TRANSPORT_ERRORS,
    RunMessage,
    agents_app,
    broadcast_stop,
    send_runs,
)
from healer.errors import JournalRefused, JournalUnavailable, LeaseLost, StepFailed
from healer.journal import executor as journal_executor
from healer.journal import host_runs
from healer.journal.host_runs import FAILED, FINAL, HostRun, Target
from healer.metrics import HealerMetrics
from healer.plan import HostsSpec, ScriptSpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import StepResult

__all__ = ["Agents", "RemoteStep"]

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL = 0.1  # seconds between looks at a batch's runs while they change
POLL_MAX = 1.0  # ... and at most, while they do not
PAUSE_POLL = 0.5


class Agents:
    """The healer's link to its agents: the settings and one Celery app, made on first use."""

    def __init__(
        self, settings: AgentsSettings, metrics: HealerMetrics, *, resume_timeout: float
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.resume_timeout = resume_timeout
        self.known: set[str] = set(settings.hosts)  # hosts whose agent_up is exported
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = agents_app(self.settings)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    async def watch(self, interval: float = 5.0) -> None:
        """Export `taskmedic_agent_up` per host until cancelled: 1 when a live agent consumes
        the host's queue (Celery's `active_queues`), 0 when none does; no series at all while
        the broker cannot be asked (blind is not down)."""
        prefix = self.settings.queue_prefix
        gauge = self.metrics.agent_up
        while True:
            try:
                serving = await asyncio.to_thread(self._served_queues)
            except TRANSPORT_ERRORS as exc:
                log.warning("agents: cannot ask the broker: %s", self.settings.scrub(str(exc)))
                gauge.clear()
            else:
                self.known |= {q[len(prefix) :] for q in serving if q.startswith(prefix)}
                for host in sorted(self.known):
                    gauge.labels(host).set(1 if self.settings.queue(host) in serving else 0)
            await asyncio.sleep(interval)

    def _served_queues(self) -> set[str]:
        replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
        return {q["name"] for queues in replies.values() for q in queues or [] if "name" in q}

    def step(
        self, journal: journal_executor.Journal, fence: journal_executor.Fence, idx: int
    ) -> RemoteStep:
        return RemoteStep(self, journal, fence, idx)


@dataclass
class _Seen:
    state: str = "pending"
    agent: str = ""


@dataclass
class RemoteStep:
    """One step of one action on its hosts (`run`), or its undo on the hosts it ran on."""

    agents: Agents
    journal: journal_executor.Journal
    fence: journal_executor.Fence
    idx: int
    _seen: dict[int, _Seen] = field(default_factory=dict)

    async def run(
        self,
        spec: ScriptSpec,
        on: HostsSpec,
        stdin: bytes,
        output: StepOutput,
        *,
        purpose: str = "step",
    ) -> StepResult:
        target = Target(self.fence.action_id, self.idx, purpose, self.fence.attempt)
        settings = self.agents.settings
        done: set[str] = set()
        if purpose == "step":
            done = await self._write(lambda c: host_runs.done_hosts(c, target))
        for host in on.hosts:
            if host in done:
                output.system(f"{host}: succeeded in an earlier attempt; not run again")
        todo = [h for h in on.hosts if h not in done]
        self.agents.known.update(on.hosts)
        size = on.batch or max(len(todo), 1)
        planned = [(h, settings.queue(h), i // size) for i, h in enumerate(todo)]
        runs = await self._write(lambda c: host_runs.create(c, target, planned))
        batches: dict[int, list[HostRun]] = {}
        for r in runs:
            batches.setdefault(r.batch, []).append(r)
        failures = 0
        final: list[HostRun] = []
        try:
            for n, b in enumerate(sorted(batches)):
                batch = batches[b]
                if len(batches) > 1:
                    names = ", ".join(r.host for r in batch)
                    output.system(f"batch {n + 1} of {len(batches)}: {names}")
                ended = await self._run_batch(target, batch, spec, stdin, output)
                final += ended
                failures += sum(1 for r in ended if r.state in FAILED)
                if failures > on.tolerance:
                    await self._too_many(target, failures, on.tolerance, final, done, output)
                paused_here = [r.host for r in batch if r.host in on.pause_after]
                if paused_here and n < len(batches) - 1:
                    await self._pause(paused_here, output)
        except (asyncio.CancelledError, StepFailed, LeaseLost, JournalUnavailable):
            await self._close_all(target)
            raise
        if failures:
            output.system(f"{failures} host(s) failed, within tolerance {on.tolerance}")
        return StepResult(_summary(final, done))

    async def undo(
        self, spec: ScriptSpec, on: HostsSpec, stdin: bytes, output: StepOutput
    ) -> StepResult:
        """The undo script on every host where the step succeeded (any attempt)."""
        step = Target(self.fence.action_id, self.idx, "step", self.fence.attempt)
        hosts = await self._write(lambda c: host_runs.done_hosts(c, step))
        ran = [h for h in on.hosts if h in hosts]
        if not ran:
            output.system("undo: the step succeeded on no host; nothing to undo")
            return StepResult({"hosts": {}})
        undo_on = HostsSpec(hosts=ran, batch=None, tolerance=0)
        return await self.run(spec, undo_on, stdin, output, purpose="undo")

    # -- one batch ------------------------------------------------------------------------

    async def _run_batch(
        self,
        target: Target,
        batch: list[HostRun],
        spec: ScriptSpec,
        stdin: bytes,
        output: StepOutput,
    ) -> list[HostRun]:
        settings = self.agents.settings
        within = spec.timeout + spec.kill_grace + settings.start_timeout
        ids = [r.id for r in batch]
        left = await self._write(lambda c: host_runs.mark_sent(c, ids, within))
        text = stdin.decode("utf-8", "replace")
        app = self.agents.app
        try:
            key = settings.key()
        except ValueError as exc:  # the key file went missing or unreadable since start
            raise StepFailed(f"nothing sent: {exc}") from None
        outgoing = [
            (
                RunMessage(
                    run_id=r.id,
                    token=r.token,
                    action_id=target.action_id,
                    step_idx=target.step_idx,
                    host=r.host,
                    script=spec,
                    stdin=spec.stdin or text,
                    output_cap=output.cap,
                    lease=settings.lease,
                ),
                r.queue,
                left[r.id],
            )
            for r in batch
            if r.id in left  # (not: sent by an earlier write of this attempt)
        ]
        # One thread call and one producer for the whole batch: a host's message does not
        # wait for the event loop between sends.
        try:
            failed = await asyncio.to_thread(send_runs, app, key, outgoing)
        except TRANSPORT_ERRORS as exc:  # the broker refused the connection itself
            failed = {msg.run_id: str(exc) for msg, _, _ in outgoing}
        by_id = {r.id: r for r in batch}
        for msg, queue, _ in outgoing:
            error = failed.get(msg.run_id)
            if error is None:
                output.system(f"{msg.host}: sent to {queue}")
                continue
            why = settings.scrub(error)
            await self._unsent(by_id[msg.run_id], why)
            output.system(f"{msg.host}: cannot send to {queue}: {why}")
        return await self._wait(target, set(ids), output)

    async def _too_many(
        self,
        target: Target,
        failures: int,
        tolerance: int,
        final: list[HostRun],
        done: set[str],
        output: StepOutput,
    ) -> None:
        """More hosts failed than tolerated: the hosts not reached are skipped, the step fails."""
        why = f"{failures} host{'' if failures == 1 else 's'} failed (tolerance {tolerance})"
        skipped = await self._write(
            lambda c: host_runs.close_open(
                c, target, "skipped", f"not run: {why}", only_pending=True
            )
        )
        if skipped:
            output.system(f"not run: {', '.join(h for _, _, h in skipped)}: {why}")
        raise StepFailed(why, result=_summary(final, done))

    async def _unsent(self, r: HostRun, why: str) -> None:
        await self._write(lambda c: host_runs.close_open_one(c, r.id, "failed", why))

    async def _wait(self, target: Target, ids: set[int], output: StepOutput) -> list[HostRun]:
        """Until every run of the batch ended. Looks every POLL seconds while runs change, less
        often (up to POLL_MAX) while a long script runs on: each look is a fenced transaction."""
        pause = POLL
        while True:
            rows = await self._write(partial(_poll, target=target))
            mine = [r for r in rows if r.id in ids]
            changed = [r for r in mine if r.state != self._seen.get(r.id, _Seen()).state]
            for r in changed:
                self._report(r, output)
            # Runs that just timed out or were interrupted: their agents may still run them.
            stale = [(r.id, r.token) for r in changed if r.state in ("timed_out", "interrupted")]
            if stale:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await asyncio.to_thread(broadcast_stop, self.agents.app, stale)
            if all(r.state in FINAL for r in mine):
                return mine
            pause = POLL if changed else min(pause * 1.5, POLL_MAX)
            await asyncio.sleep(pause)

    def _report(self, r: HostRun, output: StepOutput) -> None:
        seen = self._seen.setdefault(r.id, _Seen())
        if r.state == seen.state:
            return
        if r.agent and not seen.agent:
            output.system(f"{r.host}: started by {r.agent}")
        if r.state in FINAL:
            how = f"exit code {r.exit_code}" if r.exit_code is not None else ""
            took = f"{r.seconds:.2f}s" if r.seconds is not None else ""
            detail = ", ".join(x for x in (how, took) if x)
            line = f"{r.host}: {r.state}" + (f" ({detail})" if detail else "")
            if r.error and r.state != "succeeded":
                line += f": {r.error}"
            output.system(line)
            self.agents.metrics.agent_runs.labels(r.host, r.state).inc()
        seen.state, seen.agent = r.state, r.agent

    async def _pause(self, hosts: Sequence[str], output: StepOutput) -> None:
        action_id = self.fence.action_id
        await self._write(lambda c: host_runs.pause(c, action_id))
        output.system(
            f"paused after {', '.join(hosts)}: resume with POST /api/actions/{action_id}/resume, "
            f"the console, or `taskmedic actions resume {action_id}`"
        )
        started = time.monotonic()
        try:
            while True:
                resumed, by = await self._write(lambda c: host_runs.paused(c, action_id))
                if resumed:
                    output.system(f"resumed by {by}")
                    return
                if time.monotonic() - started > self.agents.resume_timeout:
                    raise StepFailed(
                        f"not resumed within {self.agents.resume_timeout:g}s (approval_timeout)"
                    )
                await asyncio.sleep(PAUSE_POLL)
        finally:
            with contextlib.suppress(JournalRefused, JournalUnavailable, LeaseLost):
                await self._write(lambda c: host_runs.unpause(c, action_id))

    async def _close_all(self, target: Target) -> None:
        """The step ends early: hosts not reached are `skipped`, runs under way `cancelled`
        (and their agents told to stop)."""

        async def close(c: journal_executor.Conn) -> list[tuple[int, str, str]]:
            why = "not run: the step ended early"
            await host_runs.close_open(c, target, "skipped", why, only_pending=True)
            return await host_runs.close_open(c, target, "cancelled", "stopped: the step ended")

        try:
            closed = await self._write(close)
        except (JournalRefused, JournalUnavailable, LeaseLost):
            return  # the journal is not ours any more: whoever took over closes them
        started = [(run_id, token) for run_id, token, _ in closed]
        if started:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await asyncio.to_thread(broadcast_stop, self.agents.app, started)

    async def _write(self, fn: Callable[[journal_executor.Conn], Awaitable[T]]) -> T:
        return await self.journal.run(fn, fence=self.fence)


async def _poll(c: journal_executor.Conn, *, target: Target) -> list[HostRun]:
    await host_runs.expire(c, target)
    return await host_runs.rows(c, target)


def _summary(runs: list[HostRun], done: set[str]) -> dict[str, object]:
    hosts: dict[str, object] = {
        r.host: {
            "state": r.state,
            "exit_code": r.exit_code,
            "agent": r.agent,
            "seconds": r.seconds,
            **({"error": r.error} if r.error else {}),
        }
        for r in runs
    }
    for h in done:
        hosts.setdefault(h, {"state": "succeeded", "earlier_attempt": True})
    states = [v["state"] for v in hosts.values() if isinstance(v, dict)]
    return {
        "hosts": hosts,
        "succeeded": states.count("succeeded"),
        "failed": sum(1 for s in states if s in FAILED),
    }
