"""What travels between the healer and its agents, and the Celery app both use.

A host run is one Celery task, `taskmedic.agent.run`, on the host's queue: its message carries
the run id and token (the run's fence), the rendered script spec, the alert JSON for stdin, the
output cap and the lease. A running run is stopped by the broadcast control command
`taskmedic_stop_run` (Celery's remote control: handled by each agent's consumer thread, so it
arrives even while every pool thread is busy running a script). Agents without journal access
report with messages on `reply_queue` (see `healer.agents.replies`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError
from pydantic import BaseModel, ConfigDict, Field

from exporter.base.connections import CeleryConfig, celery_app
from healer.agents.settings import AgentsSettings
from healer.errors import BadSignature
from healer.plan import ScriptSpec, canonical_json

__all__ = [
    "RUN_TASK",
    "STOP_COMMAND",
    "TRANSPORT_ERRORS",
    "RunMessage",
    "agents_app",
    "broadcast_stop",
]

RUN_TASK = "taskmedic.agent.run"
STOP_COMMAND = "taskmedic_stop_run"

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError, ConnectionError)
with contextlib.suppress(ImportError):
    import redis.exceptions

    TRANSPORT_ERRORS = (*TRANSPORT_ERRORS, redis.exceptions.RedisError)


class RunMessage(BaseModel):
    """The body of one host run's task: everything the agent needs, nothing it looks up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    token: str
    action_id: int
    step_idx: int
    host: str
    script: ScriptSpec
    stdin: str = ""
    output_cap: int = Field(default=1 << 20, ge=2)
    lease: float = Field(default=10.0, gt=0)


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, canonical_json(body).encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with its HMAC-SHA256 under the agents' shared key."""
    return {**body, "sig": _mac(key, body)}


def verify(key: bytes, signed: Any) -> dict[str, Any]:
    """The body of a signed message; `BadSignature` when it is not one (compared in constant
    time)."""
    if not isinstance(signed, dict) or not isinstance(signed.get("sig"), str):
        raise BadSignature("the message is not signed")
    body = {k: v for k, v in signed.items() if k != "sig"}
    if not hmac.compare_digest(signed["sig"], _mac(key, body)):
        raise BadSignature("the message's signature does not match the agents' key")
    return body


def agents_app(settings: AgentsSettings, *, name: str = "agents") -> Celery:
    """The Celery app of the agents' broker, with taskmedic's timeouts (`celery_app`)."""
    return celery_app(CeleryConfig(broker=settings.broker), name=name)


def broadcast_stop(app: Celery, runs: list[tuple[int, str]]) -> None:
    """Tell every agent to stop these runs (id, token) if it runs them; blocking, no reply."""
    for run_id, token in runs:
        app.control.broadcast(STOP_COMMAND, arguments={"run_id": run_id, "token": token})


def send_run(
    app: Celery, key: bytes, msg: RunMessage, queue: str, expires: float, producer: Any = None
) -> None:
    """Publish one host run, signed; a message still queued after `expires` seconds is
    discarded."""
    body = sign(key, msg.model_dump(mode="json"))
    app.send_task(RUN_TASK, args=[body], queue=queue, expires=max(expires, 1.0), producer=producer)


def send_runs(
    app: Celery, key: bytes, outgoing: list[tuple[RunMessage, str, float]]
) -> dict[int, str]:
    """Publish a batch of host runs (message, queue, expires) on one producer; returns the
    error of each run that could not be sent, by run id. Blocking."""
    failed: dict[int, str] = {}
    with app.producer_or_acquire() as producer:
        for msg, queue, expires in outgoing:
            try:
                send_run(app, key, msg, queue, expires, producer)
            except TRANSPORT_ERRORS as exc:
                failed[msg.run_id] = str(exc)
    return failed
