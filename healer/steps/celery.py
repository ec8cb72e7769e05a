"""The `celery` step: send a task by name to a configured cluster, optionally wait for it.

Uses Celery's public API only (`send_task`, `AsyncResult`, `control.revoke`). Every call that
talks to the broker or the result backend blocks, so it runs in a thread. Waiting polls the
result backend in short thread calls instead of one long blocking `get()`: a cancel stops the
wait at once, and no thread outlives the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from exporter.base.connections import celery_app
from exporter.config import Config
from healer.errors import StepFailed
from healer.plan import CelerySpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import MAX_REPR, StepResult, short_repr

__all__ = ["CeleryApps", "run_celery"]

_FAILED = {"FAILURE", "REVOKED", "REJECTED"}
_READY = {"SUCCESS", *_FAILED}
# Broker and backend errors as the Redis and AMQP transports raise them.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError, ConnectionError)
with contextlib.suppress(ImportError):
    import redis.exceptions

    _TRANSPORT_ERRORS = (*_TRANSPORT_ERRORS, redis.exceptions.RedisError)


class CeleryApps:
    """One Celery app per top-level `celery:` cluster, made on first use, closed at the end."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._apps: dict[str, Celery] = {}

    def get(self, name: str) -> Celery:
        app = self._apps.get(name)
        if app is not None:
            return app
        cluster = self.config.celery.get(name)
        if cluster is None:
            raise StepFailed(f"celery cluster {name!r} is not defined under celery")
        app = self._apps[name] = celery_app(cluster, name=name)
        return app

    def scrub(self, name: str, text: str) -> str:
        """A broker's or backend's error text with the cluster's secrets hidden."""
        cluster = self.config.celery.get(name)
        return cluster.scrub(text) if cluster is not None else text

    def close(self) -> None:
        for app in self._apps.values():
            app.close()
        self._apps.clear()


async def _state(app: Celery, task_id: str) -> tuple[str, Any, str | None]:
    def read() -> tuple[str, Any, str | None]:
        res = app.AsyncResult(task_id)
        state = str(res.state)
        if state in _READY:
            return state, res.result, res.traceback
        return state, None, None

    return await asyncio.to_thread(read)


async def run_celery(spec: CelerySpec, apps: CeleryApps, output: StepOutput) -> StepResult:
    """Send the task; with `wait`, its final state decides the step (FAILURE fails it)."""
    app = apps.get(spec.app)

    def send() -> str:
        res = app.send_task(spec.task, args=spec.args, kwargs=spec.kwargs, queue=spec.queue)
        return str(res.id)

    try:
        task_id = await asyncio.to_thread(send)
    except _TRANSPORT_ERRORS as exc:
        why = apps.scrub(spec.app, str(exc))
        raise StepFailed(f"cannot send {spec.task} to cluster {spec.app}: {why}") from None
    output.system(f"sent {spec.task} to {spec.app} as {task_id}")
    result: dict[str, Any] = {"task_id": task_id, "task": spec.task, "state": "SENT"}
    if spec.wait is None:
        return StepResult(result)
    if not app.conf.result_backend:
        raise StepFailed(f"cluster {spec.app} has no result backend to wait on", result=result)
    deadline = time.monotonic() + spec.wait
    pause = 0.05
    try:
        while True:
            try:
                state, value, traceback = await _state(app, task_id)
            except _TRANSPORT_ERRORS as exc:
                why = apps.scrub(spec.app, str(exc))
                raise StepFailed(
                    f"cannot read the result of {task_id}: {why}", result=result
                ) from None
            result["state"] = state
            if state in _READY:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"no result within {spec.wait:g}s (state {state})", result=result)
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)
    except asyncio.CancelledError:
        output.system(f"stopping: revoking {task_id}")
        with contextlib.suppress(*_TRANSPORT_ERRORS):
            await asyncio.to_thread(app.control.revoke, task_id)
        raise
    result["result"] = short_repr(value)
    output.system(f"{task_id}: {state} {result['result']}")
    if state in _FAILED:
        if traceback:
            result["traceback"] = str(traceback)[-MAX_REPR:]
        raise StepFailed(f"task {spec.task} ended {state}: {result['result']}", result=result)
    return StepResult(result)
