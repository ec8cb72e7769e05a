"""The healer's side of agents that report by message: it writes what they report.

Agents without journal access publish their runs' start, renewals, output and end on
`agents.reply_queue`; every healer replica consumes it and applies each message with the same
journal writes an agent with journal access makes (`healer.journal.host_runs`), fenced by the
run's id and token. Output messages are numbered: one applied out of order (two replicas took
neighbouring messages) is put back and applied after its predecessor, so a run's output is
stored in the order it was printed. A start the journal refuses (the run timed out in its
queue, or was cancelled) is answered with a stop broadcast, so the script does not run on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.simple import SimpleQueue

from healer.agents.settings import AgentsSettings
from healer.agents.transport import TRANSPORT_ERRORS, broadcast_stop, verify
from healer.errors import BadSignature, JournalRefused
from healer.journal import executor as journal_executor
from healer.journal import host_runs

__all__ = ["apply", "consume_replies"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Chunk:
    stream: str
    at: datetime
    data: bytes


async def apply(conn: journal_executor.Conn, body: dict[str, Any]) -> str:
    """Apply one agent message; returns "ok", "stale" (the run is no longer running: drop
    it, and stop its agent) or "later" (output ahead of its predecessor: put it back)."""
    run_id, token, kind = int(body["run_id"]), str(body["token"]), body.get("type")
    if kind == "start":
        taken = await host_runs.start(conn, run_id, token, str(body["agent"]), float(body["lease"]))
        return "ok" if taken is not None else "stale"
    if kind == "renew":
        ok = await host_runs.renew(conn, run_id, token, float(body["lease"]))
        return "ok" if ok else "stale"
    current = await host_runs.state(conn, run_id, token)
    if current is None or current[0] != "running":
        return "stale"
    seq = int(body["seq"])
    if seq != current[1] + 1:
        return "later" if seq > current[1] else "ok"  # an older one: applied already
    if kind == "output":
        chunks = [
            _Chunk(c["stream"], datetime.fromisoformat(c["at"]), base64.b64decode(c["data"]))
            for c in body["chunks"]
        ]
        ok = await host_runs.append(conn, run_id, token, chunks, body.get("output_bytes"), seq)
        return "ok" if ok else "later"
    if kind == "finish":
        ok = await host_runs.finish(
            conn,
            run_id,
            token,
            state=str(body["state"]),
            exit_code=body.get("exit_code"),
            error=str(body.get("error", "")),
            result=dict(body.get("result") or {}),
            output_bytes=int(body.get("output_bytes") or 0),
            seq=seq,
        )
        return "ok" if ok else "stale"
    raise ValueError(f"unknown agent message type {kind!r}")


async def consume_replies(
    settings: AgentsSettings, journal: journal_executor.Journal, app: Any
) -> None:
    """Consume `reply_queue` until cancelled (a supervised loop of the executor).

    The broker side is blocking (kombu), so one thread owns the connection from start to end
    and hands each message to the event loop to be written; cancelling this coroutine stops
    the thread within half a second and closes the connection in it.
    """
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    async def handle(signed: Any) -> str:
        try:
            body = verify(settings.key(), signed)
            return await journal.run(lambda c: apply(c, body))
        except (KeyError, TypeError, ValueError, BadSignature, JournalRefused) as exc:
            log.warning("agent message dropped: %s", exc)
            return "dropped"

    def consume_once() -> None:
        with Connection(settings.broker_url(), connect_timeout=5) as conn:
            queue: SimpleQueue = conn.SimpleQueue(
                Queue(settings.reply_queue, durable=True)  # type: ignore[no-untyped-call]
            )
            try:
                while not stop.is_set():
                    try:
                        message = queue.get(True, 0.5)  # type: ignore[no-untyped-call]
                    except queue.Empty:
                        continue
                    body: Any = message.payload
                    outcome = asyncio.run_coroutine_threadsafe(handle(body), loop).result()
                    if outcome == "later":
                        # Its predecessor is with another replica (or lost: then the run
                        # ends at its deadline and this one is dropped as stale).
                        message.requeue()
                        stop.wait(0.05)
                        continue
                    message.ack()
                    if outcome == "stale" and body["type"] in ("start", "renew", "output"):
                        with contextlib.suppress(*TRANSPORT_ERRORS):
                            broadcast_stop(app, [(int(body["run_id"]), str(body["token"]))])
            finally:
                queue.close()  # type: ignore[no-untyped-call]

    def consume() -> None:
        # The agents' broker being away is expected weather, not a failure of the healer (its
        # readiness does not depend on it): connect again with a growing pause.
        pause = 0.5
        while not stop.is_set():
            try:
                consume_once()
            except TRANSPORT_ERRORS as exc:
                log.warning(
                    "agents' reply queue: %s; again in %gs", settings.scrub(str(exc)), pause
                )
                stop.wait(pause)
                pause = min(pause * 2, 10.0)
            else:
                pause = 0.5

    worker = asyncio.ensure_future(asyncio.to_thread(consume))
    try:
        await asyncio.shield(worker)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait({worker}, timeout=5.0)
