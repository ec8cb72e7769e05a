"""Writing journal rows the way the ingest and the executor do, for the log and console tests.

Each write is one transaction with the notification the executor sends, so the
readers under test see exactly what they would see in production.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import yaml
from aiohttp import web
from psycopg.types.json import Jsonb

from healer.app import create_app
from healer.config import HealerConfig
from healer.plan import Plan, PlanStep, ScriptSpec
from tests.services import start_healer_process

FINAL = ("succeeded", "failed", "cancelled", "skipped")
TOKEN = "s3cret-token-for-tests"
USER, PASSWORD = "ops", "correct horse battery staple"
# Alertmanager's token posts alerts and reads (the tests' own checks use it); the person
# `USER` reads and approves.
USER_AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
AUTH_CONFIG: dict[str, Any] = {
    "bearer_token": TOKEN,
    "alertmanager_roles": ["post_alerts", "read"],
    "users": [{"name": USER, "password": PASSWORD, "roles": ["approve"]}],
}


def make_app(dsn: str, *, auth: bool = False) -> web.Application:
    """The healer's own app (create_app) on `dsn`, recording only (no executor): with a token
    and basic auth, or (`auth=False`) open on loopback as the laptop demo runs it."""
    creds: dict[str, Any] = AUTH_CONFIG if auth else {"allow_unauthenticated": True}
    config = HealerConfig.model_validate({"healer": {"journal": {"dsn": dsn}, "auth": creds}})
    return create_app(config, dsn=dsn, run_executor=False)


def sample_plan(rule: str = "refresh-tree-status", steps: int = 1) -> Plan:
    return Plan(
        rule=rule,
        steps=[
            PlanStep(
                name=f"step {i}",
                kind="script",
                script=ScriptSpec(argv=["/bin/echo", f"hello {i}"], timeout=30),
            )
            for i in range(steps)
        ],
        alert={"labels": {"alertname": "TaskmedicStaleRows", "check": "tree_status_cache"}},
    )


async def create_action(
    conn: psycopg.AsyncConnection[Any],
    *,
    rule: str = "refresh-tree-status",
    state: str = "running",
    steps: int = 1,
    labels: dict[str, str] | None = None,
    created_at: datetime | None = None,
) -> int:
    """An alert and its action (with `steps` steps), committed; returns the action id."""
    labels = labels or {"alertname": "TaskmedicStaleRows", "check": "tree_status_cache"}
    plan = sample_plan(rule, steps)
    now = created_at or datetime.now(UTC)
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO notifications (receiver, status, payload) VALUES ('am', 'firing', %s)"
            " RETURNING id",
            (Jsonb({"version": "4"}),),
        )
        (nid,) = await cur.fetchone()  # type: ignore[misc]
        fp = f"fp{nid}"
        cur = await conn.execute(
            "INSERT INTO alerts (notification_id, status, fingerprint, starts_at, labels)"
            " VALUES (%s, 'firing', %s, %s, %s) RETURNING id",
            (nid, fp, now, Jsonb(labels)),
        )
        (alert_id,) = await cur.fetchone()  # type: ignore[misc]
        started = now if state not in ("pending", "awaiting_approval", "skipped") else None
        finished = now + timedelta(seconds=3) if state in FINAL else None
        cur = await conn.execute(
            "INSERT INTO actions (rule, fingerprint, starts_at, alert_id, labels, state, plan,"
            " plan_hash, created_at, started_at, finished_at, approval_expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                rule,
                fp,
                now,
                alert_id,
                Jsonb(labels),
                state,
                Jsonb(json.loads(plan.canonical())),
                plan.hash(),
                now,
                started,
                finished,
                now + timedelta(hours=1) if state == "awaiting_approval" else None,
            ),
        )
        (action_id,) = await cur.fetchone()  # type: ignore[misc]
        for i, s in enumerate(plan.steps):
            await conn.execute(
                "INSERT INTO steps (action_id, idx, name, kind) VALUES (%s, %s, %s, %s)",
                (action_id, i, s.name, s.kind),
            )
        await conn.execute(
            "INSERT INTO events (action_id, actor, kind, to_state)"
            " VALUES (%s, 'test', 'created', %s)",
            (action_id, state),
        )
    return int(action_id)


async def append_chunk(
    conn: psycopg.AsyncConnection[Any],
    action_id: int,
    data: bytes | str,
    *,
    stream: str = "stdout",
    step: int = 0,
    at: datetime | None = None,
    host: str = "",
) -> int:
    """One log chunk (of a host run when `host` is given) and its `taskmedic_log`
    notification, committed; returns the chunk id."""
    raw = data.encode() if isinstance(data, str) else data
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO log_chunks (action_id, step_idx, host, stream, at, data)"
            " VALUES (%s, %s, %s, %s, coalesce(%s, now()), %s) RETURNING id",
            (action_id, step, host, stream, at, raw),
        )
        (chunk_id,) = await cur.fetchone()  # type: ignore[misc]
        await conn.execute("SELECT pg_notify('taskmedic_log', %s)", (str(action_id),))
    return int(chunk_id)


async def add_host_run(
    conn: psycopg.AsyncConnection[Any],
    action_id: int,
    host: str,
    *,
    step: int = 0,
    state: str = "succeeded",
    exit_code: int | None = None,
    agent: str = "agent-1",
    error: str = "",
    seconds: float = 1.5,
    batch: int = 0,
) -> int:
    """One run of step `step` on `host`, as an agent would have left it; returns its id."""
    started = state not in ("pending", "sent", "cancelled", "skipped")
    finished = started and state != "running"
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO host_runs (action_id, step_idx, attempt, host, queue, batch, token,"
            " state, agent, exit_code, error, sent_at, started_at, finished_at)"
            " VALUES (%s, %s, 1, %s, 'taskmedic.agent.' || %s, %s, gen_random_uuid()::text,"
            " %s, %s, %s, %s, now() - make_interval(secs => %s + 1),"
            " CASE WHEN %s THEN now() - make_interval(secs => %s) END,"
            " CASE WHEN %s THEN now() END) RETURNING id",
            (
                action_id,
                step,
                host,
                host,
                batch,
                state,
                agent if started else "",
                exit_code,
                error,
                seconds,
                started,
                seconds,
                finished,
            ),
        )
        (run_id,) = await cur.fetchone()  # type: ignore[misc]
    return int(run_id)


async def set_paused(conn: psycopg.AsyncConnection[Any], action_id: int) -> None:
    """Pause the action between batches of hosts, as the executor does."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE actions SET paused_at = now(), resume_requested_at = NULL, resumed_by = NULL"
            " WHERE id = %s",
            (action_id,),
        )


async def set_state(
    conn: psycopg.AsyncConnection[Any], action_id: int, state: str, *, step_state: str | None = None
) -> None:
    """Move the action to `state` with its event and `taskmedic_state` notification."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE actions SET state = %s,"
            " finished_at = CASE WHEN %s THEN now() ELSE finished_at END,"
            " started_at = CASE WHEN %s = 'running' THEN coalesce(started_at, now())"
            "                   ELSE started_at END"
            " WHERE id = %s RETURNING (SELECT state FROM actions WHERE id = %s)",
            (state, state in FINAL, state, action_id, action_id),
        )
        (before,) = await cur.fetchone()  # type: ignore[misc]
        if step_state is not None:
            await conn.execute(
                "UPDATE steps SET state = %s, exit_code = %s,"
                " started_at = coalesce(started_at, now()), finished_at = now()"
                " WHERE action_id = %s",
                (step_state, 0 if step_state == "succeeded" else 1, action_id),
            )
        await conn.execute(
            "INSERT INTO events (action_id, actor, kind, from_state, to_state)"
            " VALUES (%s, 'test', 'state', %s, %s)",
            (action_id, before, state),
        )
        await conn.execute("SELECT pg_notify('taskmedic_state', %s)", (str(action_id),))


# --- Server-Sent Events, read as a browser's EventSource would --------------------------------


@dataclass
class Event:
    event: str
    data: str
    id: str | None


async def read_events(resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """Parse an event stream (the fields taskmedic sends: id, event, data; comments skipped)."""
    data: list[str] = []
    event = "message"
    event_id: str | None = None
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or event != "message" or event_id is not None:
                yield Event(event, "\n".join(data), event_id)
            data, event, event_id = [], "message", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value


# --- real `taskmedic healer` processes ---------------------------------------------------------


@dataclass
class HealerProcess:
    """A real `taskmedic healer` (webhook, API, console, executor) on a shared journal."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (the healer drains and exits 0), then kill -9 if it does not."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def write_config(tmp: Path, dsn: str, rules: list[dict[str, Any]], name: str = "healer") -> Path:
    """taskmedic.yaml naming the journal, a bearer token, basic auth, and a rule file."""
    rules_file = tmp / f"{name}-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    config = tmp / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "healer": {
                    "journal": {"dsn": dsn},
                    "auth": AUTH_CONFIG,
                    "rules": [str(rules_file)],
                    "lease": "5s",
                    "data_dir": str(tmp / f"{name}-data"),
                }
            }
        )
    )
    return config


def start_healer(config: Path, tmp: Path, name: str = "healer") -> HealerProcess:
    """Start `taskmedic healer --config …` on a free port and wait until /readyz says ready."""
    log = tmp / f"{name}.log"
    proc, port = start_healer_process(config, log)
    return HealerProcess(proc, port, log)


def alert_payload(labels: dict[str, str], fingerprint: str | None = None) -> dict[str, Any]:
    """A firing notification as Alertmanager 0.25 sends it (webhook version 4)."""
    fp = fingerprint or uuid.uuid4().hex[:16]
    return {
        "receiver": "taskmedic",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "test alert"},
                "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus-0:9090/graph",
                "fingerprint": fp,
            }
        ],
        "groupLabels": {"alertname": labels.get("alertname", "")},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager-0:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{labels.get("alertname", "")}"}}',
        "truncatedAlerts": 0,
    }


async def fire(healer: HealerProcess, labels: dict[str, str]) -> list[int]:
    """POST one alert to the healer; returns the ids of the actions it recorded."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{healer.url}/alerts",
            json=alert_payload(labels),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
    return [int(a["id"]) for a in body["actions"]]
