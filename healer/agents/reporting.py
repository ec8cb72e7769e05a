"""How an agent reports a host run: straight into the journal, or by message to the healers.

Both reporters offer the same four calls (`start`, `renew`, the output `sink`, `finish`).
`JournalReporter` writes with the run's id and token through `healer.journal.host_runs`.
`MessageReporter` is for agents that may not reach the journal: it takes the run by creating
its record in `state_dir` (O_EXCL, so a redelivered message finds it), and publishes start,
renewals, output and the end on `reply_queue`, numbered so that a healer applies output in
order (`healer.agents.replies`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from celery import Celery
from kombu.entity import Queue
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from exporter.base.connections import pg_connect_args
from healer.agents.settings import AgentsSettings
from healer.agents.transport import RunMessage, sign
from healer.errors import LeaseLost
from healer.journal import executor as journal_executor
from healer.journal import host_runs
from healer.plan import ScriptSpec
from healer.steps.output_capture import OutputChunk

__all__ = ["JournalReporter", "MessageReporter", "Reporter"]

# Per worker thread: its journal pool (see JournalReporter._j).
_thread = threading.local()


class Reporter(Protocol):
    async def start(self) -> bool:
        """Take the run; False when it is not to be run (taken, finished, expired)."""

    def refusal(self) -> str | None:
        """Why the taken run must not run as its message says (None: it may)."""

    async def renew(self) -> bool: ...
    async def sink(self, chunks: Sequence[OutputChunk], output_bytes: int | None) -> None: ...
    async def finish(
        self,
        *,
        state: str,
        exit_code: int | None,
        error: str,
        result: dict[str, Any],
        output_bytes: int,
    ) -> bool: ...
    async def close(self) -> None: ...


class JournalReporter:
    """Writes the run's state and output straight into the journal."""

    def __init__(self, settings: AgentsSettings, msg: RunMessage, agent: str) -> None:
        assert settings.journal is not None
        self.journal_config = settings.journal
        self.msg = msg
        self.agent = agent
        self._planned: dict[str, Any] | None = None

    async def _j(self) -> journal_executor.Journal:
        """The journal of this worker thread: a pool opened once per thread, on the thread's
        own event loop (`healer.agents.worker`), so a host run does not pay for a connection."""
        journal: journal_executor.Journal | None = getattr(_thread, "journal", None)
        if journal is None:
            # Only here, once per thread: the password file is read when a pool is made.
            args = pg_connect_args(
                self.journal_config, application_name=f"taskmedic-agent {self.agent}"
            )
            conninfo = args.pop("conninfo")
            args["autocommit"] = True
            args["row_factory"] = dict_row
            pool: AsyncConnectionPool[journal_executor.Conn] = AsyncConnectionPool(
                conninfo,
                connection_class=psycopg.AsyncConnection[dict[str, Any]],
                kwargs=args,
                min_size=1,
                max_size=2,
                open=False,
                check=AsyncConnectionPool.check_connection,
            )
            await pool.open(wait=True, timeout=10.0)
            journal = _thread.journal = journal_executor.Journal(pool, retry_for=self.msg.lease / 2)
        return journal

    async def start(self) -> bool:
        j = await self._j()
        m = self.msg
        self._planned = await j.run(
            lambda c: host_runs.start(c, m.run_id, m.token, self.agent, m.lease)
        )
        return self._planned is not None

    def refusal(self) -> str | None:
        """The message's script must be the one of the action's stored (approved) plan: a
        message put on the broker by anyone else runs nothing."""
        try:
            planned = ScriptSpec.model_validate(self._planned)
        except ValidationError:
            return "the action's plan has no script for this step: refused"
        if planned != self.msg.script:
            return "the message's script is not the one of the action's plan: refused"
        return None

    async def renew(self) -> bool:
        j = await self._j()
        m = self.msg
        return await j.run(lambda c: host_runs.renew(c, m.run_id, m.token, m.lease))

    async def sink(self, chunks: Sequence[OutputChunk], output_bytes: int | None) -> None:
        j = await self._j()
        m = self.msg
        ok = await j.run(lambda c: host_runs.append(c, m.run_id, m.token, chunks, output_bytes))
        if not ok:
            raise LeaseLost(f"run {m.run_id} is no longer running")

    async def finish(
        self,
        *,
        state: str,
        exit_code: int | None,
        error: str,
        result: dict[str, Any],
        output_bytes: int,
    ) -> bool:
        j = await self._j()
        m = self.msg
        return await j.run(
            lambda c: host_runs.finish(
                c,
                m.run_id,
                m.token,
                state=state,
                exit_code=exit_code,
                error=error,
                result=result,
                output_bytes=output_bytes,
            )
        )

    async def close(self) -> None:
        return None  # the thread's pool serves its next run


class MessageReporter:
    """Reports by message on `reply_queue`; the healers write what it reports."""

    def __init__(self, settings: AgentsSettings, msg: RunMessage, agent: str, app: Celery) -> None:
        self.settings = settings
        self.msg = msg
        self.agent = agent
        self.app = app
        self.seq = 0
        self.key = settings.key()
        self._queue = Queue(settings.reply_queue, durable=True)  # type: ignore[no-untyped-call]

    def _publish(self, body: dict[str, Any]) -> None:
        body = sign(self.key, {"run_id": self.msg.run_id, "token": self.msg.token, **body})
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange="",
                routing_key=self.settings.reply_queue,
                declare=[self._queue],
                serializer="json",
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
            )

    async def _send(self, body: dict[str, Any]) -> None:
        await asyncio.to_thread(self._publish, body)

    async def start(self) -> bool:
        runs = self.settings.state_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(runs / str(self.msg.run_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        os.write(fd, self.msg.token.encode())
        os.fsync(fd)
        os.close(fd)
        await self._send({"type": "start", "agent": self.agent, "lease": self.msg.lease})
        return True

    def refusal(self) -> str | None:
        return None  # its message was signed with the agents' shared secret

    async def renew(self) -> bool:
        await self._send({"type": "renew", "lease": self.msg.lease})
        return True  # a run the journal no longer holds is stopped by the healer's broadcast

    async def sink(self, chunks: Sequence[OutputChunk], output_bytes: int | None) -> None:
        self.seq += 1
        await self._send(
            {
                "type": "output",
                "seq": self.seq,
                "output_bytes": output_bytes,
                "chunks": [
                    {
                        "stream": c.stream,
                        "at": c.at.isoformat(),
                        "data": base64.b64encode(c.data).decode(),
                    }
                    for c in chunks
                ],
            }
        )

    async def finish(
        self,
        *,
        state: str,
        exit_code: int | None,
        error: str,
        result: dict[str, Any],
        output_bytes: int,
    ) -> bool:
        self.seq += 1
        await self._send(
            {
                "type": "finish",
                "seq": self.seq,
                "state": state,
                "exit_code": exit_code,
                "error": error,
                "result": result,
                "output_bytes": output_bytes,
            }
        )
        return True

    async def close(self) -> None:
        return None
