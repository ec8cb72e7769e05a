"""Real `taskmedic agent` processes for the tests of steps on other hosts.

`AgentFleet` writes the agents' own config file (the `agents:` section: the test's broker,
its queue prefix, optionally the journal) and starts `taskmedic agent --queue HOST` processes,
each in a process group of its own, waiting until Celery says the worker is ready and it
answers a ping. `settings` is the healer's view of the same section.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery
from kombu.connection import Connection

from healer.agents.settings import AgentsSettings
from healer.agents.transport import agents_app
from healer.plan import HostsSpec, PlanStep, ScriptSpec
from tests.services import ROOT, Worker
from tests.support.journal_helpers import fetch


@dataclass
class AgentProc(Worker):
    """A `taskmedic agent` process serving host `hostname`. `kill()` is kill -9 of its process
    group: nothing is acknowledged, and its scripts (each in a session of its own) are orphaned,
    as on a real host."""

    @property
    def host(self) -> str:
        return self.hostname


def on_hosts(name: str, code: str, hosts: list[str], **kw: Any) -> PlanStep:
    """A script step (`sh -c code`, the test's choice of program) on `hosts`."""
    on = HostsSpec(
        hosts=hosts,
        batch=kw.pop("batch", None),
        tolerance=kw.pop("tolerance", 0),
        pause_after=kw.pop("pause_after", []),
    )
    return PlanStep(
        name=name, kind="script", on=on, script=ScriptSpec(argv=["sh", "-c", code], **kw)
    )


async def host_runs(dsn: str, action_id: int) -> list[dict[str, Any]]:
    return await fetch(dsn, "SELECT * FROM host_runs WHERE action_id = %s ORDER BY id", action_id)


async def host_output(dsn: str, action_id: int, host: str) -> bytes:
    """What `host` printed on stdout for the action."""
    rows = await fetch(
        dsn,
        "SELECT data FROM log_chunks WHERE action_id = %s AND host = %s AND stream = 'stdout'"
        " ORDER BY id",
        action_id,
        host,
    )
    return b"".join(bytes(r["data"]) for r in rows)


@dataclass
class AgentFleet:
    broker: str
    tmp: Path
    journal_dsn: str | None = None  # None: agents report by message
    lease: float = 2.0
    start_timeout: float = 5.0
    visibility_timeout: float | None = None
    prefix: str = field(default_factory=lambda: f"tm-{uuid.uuid4().hex[:6]}.")
    started: list[AgentProc] = field(default_factory=list)

    def section(self, *, journal: bool) -> dict[str, object]:
        key = self.tmp / "agents-key"
        if not key.exists():
            key.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        out: dict[str, object] = {
            "broker": self.broker,
            "secret_file": str(key),
            "queue_prefix": self.prefix,
            "reply_queue": self.prefix + "replies",
            "lease": self.lease,
            "start_timeout": self.start_timeout,
            "state_dir": str(self.tmp / "agent-state"),
        }
        if self.visibility_timeout is not None:
            out["visibility_timeout"] = self.visibility_timeout
        if journal and self.journal_dsn is not None:
            out["journal"] = {"dsn": self.journal_dsn}
        return out

    @property
    def settings(self) -> AgentsSettings:
        """The healer's `agents:` section."""
        return AgentsSettings.model_validate(self.section(journal=self.journal_dsn is not None))

    def app(self) -> Celery:
        return agents_app(self.settings, name="test")

    def start(
        self,
        host: str,
        *,
        state_dir: Path | None = None,
        wait: bool = True,
        prefix_argv: Sequence[str] = (),
        broker: str | None = None,
        journal_dsn: str | None = None,
    ) -> AgentProc:
        """Start `taskmedic agent --queue host` and wait until it answers a ping.

        `prefix_argv` runs it through another command (`ip netns exec NS`); `broker` and
        `journal_dsn` are the same services as the fleet's, by another address."""
        section = self.section(journal=self.journal_dsn is not None)
        if state_dir is not None:
            section["state_dir"] = str(state_dir)
        if broker is not None:
            section["broker"] = broker
        if journal_dsn is not None and "journal" in section:
            section["journal"] = {"dsn": journal_dsn}
        config = self.tmp / f"agent-{host}-{uuid.uuid4().hex[:4]}.yaml"
        config.write_text(yaml.safe_dump({"agents": section}))
        log = self.tmp / f"agent-{host}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    *prefix_argv,
                    sys.executable,
                    "-m",
                    "healer.cli",
                    "agent",
                    "--config",
                    str(config),
                    "--queue",
                    host,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                start_new_session=True,
            )
        agent = AgentProc(host, proc, log)
        self.started.append(agent)
        if wait:
            self.wait_ready(agent)
        return agent

    def wait_ready(self, agent: AgentProc, within: float = 30.0) -> None:
        app = self.app()
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                if agent.proc.poll() is not None:
                    raise AssertionError(f"agent {agent.host} exited:\n{agent.output()}")
                queues = app.control.inspect(timeout=0.5).active_queues() or {}
                names = {q["name"] for qs in queues.values() for q in qs or []}
                if self.prefix + agent.host in names:
                    return
            raise AssertionError(f"agent {agent.host} never served its queue:\n{agent.output()}")
        finally:
            app.close()

    def stop_all(self) -> None:
        for agent in self.started:
            agent.kill()


def delete_queues(url: str, prefix: str, names: list[str]) -> None:
    """Delete the test's queues on a shared broker (RabbitMQ keeps durable queues)."""
    with Connection(url) as conn:
        for name in names:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_delete(prefix + name)
