"""`taskmedic agent`: a Celery worker that runs the host runs of script steps sent to it.

A run is executed by the same code as a step on the healer's host (`healer.steps.script`:
argv only, never a shell; the declared environment on a minimal base; stdin the alert JSON; a
timeout that stops the whole process group), and its output goes through the same capture
(`StepOutput`: chunks at newlines, 64 KiB, or within a second; head and tail under the cap).

Exactly once per host: the agent starts a run only by taking it in the journal (`sent` ->
`running`, before its deadline), or, without journal access, by creating its record in
`state_dir` (O_EXCL). A message redelivered after a crash finds the run taken and is
acknowledged and ignored. Messages are acknowledged after the run (`acks_late`), so a message
taken by an agent that dies before starting it is delivered again: at once on RabbitMQ, after
the visibility timeout on Redis. While it runs, the agent renews the run's lease every lease/3;
a renewal the journal refuses (the run was cancelled, timed out or interrupted) or a
`taskmedic_stop_run` broadcast stops the script's process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from celery.worker.control import control_command
from pydantic import ValidationError

from healer.agents.reporting import JournalReporter, MessageReporter, Reporter
from healer.agents.settings import AgentsSettings
from healer.agents.transport import RUN_TASK, RunMessage, agents_app, verify
from healer.errors import BadSignature, StepFailed
from healer.steps.output_capture import StepOutput
from healer.steps.script import run_script

__all__ = ["agent_app", "execute", "run_agent"]

log = logging.getLogger(__name__)

# Runs this process is executing: run id -> (token, event set to stop it).
_RUNNING: dict[int, tuple[str, threading.Event]] = {}
_RUNNING_LOCK = threading.Lock()


@control_command(  # type: ignore[untyped-decorator]
    args=[("run_id", int), ("token", str)], signature="<run_id> <token>"
)
def taskmedic_stop_run(state: Any, run_id: int, token: str) -> dict[str, str]:
    """Stop a run this agent executes (the healer's broadcast; unknown runs are ignored)."""
    with _RUNNING_LOCK:
        found = _RUNNING.get(run_id)
    if found is None or found[0] != token:
        return {"ok": "not running here"}
    found[1].set()
    return {"ok": "stopping"}


async def execute(msg: RunMessage, reporter: Reporter, stop: threading.Event) -> str:
    """Run one host run to its end; returns what became of it (or "ignored")."""
    if not await reporter.start():
        log.info("run %s on %s: already taken, finished or expired; ignored", msg.run_id, msg.host)
        return "ignored"
    refused = reporter.refusal()
    if refused is not None:
        log.error("run %s on %s: %s", msg.run_id, msg.host, refused)
        await reporter.finish(
            state="failed", exit_code=None, error=refused, result={}, output_bytes=0
        )
        return "failed"
    lost = asyncio.Event()
    out = StepOutput(reporter.sink, cap=msg.output_cap, on_error=lambda exc: lost.set())
    state, exit_code, error, result = "succeeded", None, "", {}
    # The script learns which host it runs for; nothing else of the agent's environment.
    spec = msg.script.model_copy(update={"env": {**msg.script.env, "TASKMEDIC_HOST": msg.host}})
    async with out:
        script = asyncio.create_task(run_script(spec, msg.stdin.encode(), out))
        watcher = asyncio.create_task(_watch(msg, reporter, stop, lost, out))
        await asyncio.wait({script, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not script.done():
            script.cancel()
        watcher.cancel()
        try:
            res = await script
        except StepFailed as exc:
            result, exit_code, error = exc.result, exc.exit_code, str(exc)
            state = "timed_out" if exc.result.get("timed_out") else "failed"
        except asyncio.CancelledError:
            state, error = "cancelled", "stopped on the healer's request"
        else:
            result, exit_code = res.result, res.exit_code
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await reporter.finish(
        state=state, exit_code=exit_code, error=error, result=result, output_bytes=out.total
    )
    return state


async def _watch(
    msg: RunMessage, reporter: Reporter, stop: threading.Event, lost: asyncio.Event, out: StepOutput
) -> None:
    """Returns when the run must stop: a stop broadcast, or the journal refusing the run."""
    every = msg.lease / 3
    next_renew = asyncio.get_running_loop().time() + every
    while not stop.is_set() and not lost.is_set():
        now = asyncio.get_running_loop().time()
        if now >= next_renew:
            if not await reporter.renew():
                out.system("the run is no longer running in the journal: stopping")
                return
            next_renew = now + every
        await asyncio.sleep(0.1)
    out.system("stop requested: stopping")


def agent_app(settings: AgentsSettings, agent: str) -> Celery:
    """The agent's Celery app, with the run task registered."""
    app = agents_app(settings, name="agent")
    app.conf.update(
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=True,
    )
    if settings.visibility_timeout is not None:
        opts = dict(app.conf.broker_transport_options or {})
        opts["visibility_timeout"] = settings.visibility_timeout
        app.conf.broker_transport_options = opts

    @app.task(name=RUN_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def run(signed: dict[str, Any]) -> str:
        try:
            msg = RunMessage.model_validate(verify(settings.key(), signed))
        except (BadSignature, ValidationError) as exc:
            log.warning("a run message was dropped: %s", str(exc).splitlines()[0])
            return "dropped"
        stop = threading.Event()
        with _RUNNING_LOCK:
            _RUNNING[msg.run_id] = (msg.token, stop)
        try:
            reporter: Reporter
            if settings.journal is not None:
                reporter = JournalReporter(settings, msg, agent)
            else:
                reporter = MessageReporter(settings, msg, agent, app)
            return _thread_loop().run_until_complete(_execute_closing(msg, reporter, stop))
        finally:
            with _RUNNING_LOCK:
                _RUNNING.pop(msg.run_id, None)

    return app


_thread = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """The event loop of this pool thread, kept for its next run (with its journal pool)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread, "loop", None)
    if loop is None:
        loop = _thread.loop = asyncio.new_event_loop()
    return loop


async def _execute_closing(msg: RunMessage, reporter: Reporter, stop: threading.Event) -> str:
    try:
        return await execute(msg, reporter, stop)
    finally:
        await reporter.close()


# A record of a taken run outlives any redelivery of its message (its deadline is the step's
# timeout plus minutes) by far; older ones are removed when the agent starts.
KEEP_RUN_RECORDS = 7 * 86400.0


def prune_run_records(state_dir: Path, older_than: float = KEEP_RUN_RECORDS) -> int:
    """Remove the records of runs taken longer ago than `older_than` seconds; returns how many."""
    runs = state_dir / "runs"
    if not runs.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for record in runs.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if record.stat().st_mtime < cutoff:
                record.unlink()
                removed += 1
    return removed


def run_agent(settings: AgentsSettings, hosts: Sequence[str], *, loglevel: str = "INFO") -> int:
    """Serve the queues of `hosts` until stopped; returns the worker's exit code."""
    if settings.journal is None:
        removed = prune_run_records(settings.state_dir)
        if removed:
            log.info("removed %d records of runs taken over a week ago", removed)
    node = socket.gethostname()
    agent = f"{'+'.join(hosts)}@{node}"
    app = agent_app(settings, agent)
    worker = app.Worker(
        hostname=agent,
        queues=[settings.queue(h) for h in hosts],
        pool="threads",
        concurrency=settings.concurrency,
        without_mingle=True,
        without_gossip=True,
        loglevel=loglevel,
        quiet=True,
    )
    worker.start()
    return int(worker.exitcode or 0)
