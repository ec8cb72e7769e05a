"""The `script` step: run an argv list directly (never a shell) in a process group of its own.

Why a group: a script's children (`sleep` in a shell script, a `systemctl` helper) must not
outlive a timeout or a cancel. The step starts the process with `start_new_session`, so its
group id is its pid; stopping it sends SIGTERM to the whole group, then SIGKILL after
`kill_grace` to whatever is left. The environment is a minimal base (PATH, LANG, HOME) plus
the plan's own variables: nothing of the healer's environment (tokens, DSNs) leaks in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from healer.plan import ScriptSpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import StepError, StepResult

__all__ = ["base_env", "run_script"]

READ_SIZE = 64 * 1024
_DEFAULT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}


def base_env() -> dict[str, str]:
    """PATH, LANG and HOME from the healer's environment (or safe defaults), nothing else."""
    return {k: os.environ.get(k) or v for k, v in _DEFAULT_ENV.items()}


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _pump(reader: asyncio.StreamReader | None, stream: str, output: StepOutput) -> None:
    if reader is None:
        return
    while data := await reader.read(READ_SIZE):
        output.feed(stream, data)


async def _feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> None:
    if proc.stdin is None:
        return
    # A script that exits without reading its stdin is not an error.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()
        await proc.stdin.wait_closed()


async def _stop_group(
    proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]], grace: float
) -> None:
    """SIGTERM to the group; after `grace`, SIGKILL to whatever of the group is left."""
    _killpg(proc.pid, signal.SIGTERM)
    waiter = asyncio.ensure_future(proc.wait())
    await asyncio.wait([waiter, *readers], timeout=grace)  # never cancels the readers
    _killpg(proc.pid, signal.SIGKILL)
    await waiter


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


async def run_script(spec: ScriptSpec, stdin: bytes, output: StepOutput) -> StepResult:
    """Run `spec.argv`, streaming its output to `output`; a non-zero exit fails the step."""
    env = {**base_env(), **spec.env}
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise StepError(f"cannot start {spec.argv[0]!r}: {exc.strerror or exc}") from None
    readers = [
        asyncio.create_task(_pump(proc.stdout, "stdout", output)),
        asyncio.create_task(_pump(proc.stderr, "stderr", output)),
    ]
    feeder = asyncio.create_task(_feed_stdin(proc, stdin))
    timed_out = False
    try:
        waiter = asyncio.ensure_future(proc.wait())
        try:  # not asyncio.wait_for: on 3.11 it can swallow a cancel that races the exit
            exited, _ = await asyncio.wait({waiter}, timeout=spec.timeout)
        finally:
            waiter.cancel()
        if not exited:
            timed_out = True
            output.system(
                f"timed out after {spec.timeout:g}s: SIGTERM to the process group, "
                f"SIGKILL after {spec.kill_grace:g}s"
            )
            await _stop_group(proc, readers, spec.kill_grace)
        # The leader exited. Children still holding its pipes get kill_grace, then stop too:
        # a step's processes do not outlive it (a daemon must detach with setsid itself).
        _, pending = await asyncio.wait(readers, timeout=spec.kill_grace)
        if pending:
            output.system("processes of the step still hold its output: stopping its group")
            await _stop_group(proc, readers, spec.kill_grace)
            await asyncio.wait(readers)
    except asyncio.CancelledError:
        output.system("stopping: SIGTERM to the process group")
        await _stop_group(proc, readers, spec.kill_grace)
        raise
    finally:
        for task in [*readers, feeder]:
            task.cancel()
        await asyncio.gather(*readers, feeder, return_exceptions=True)
    code = proc.returncode
    assert code is not None
    result = {"exit_code": code, "seconds": round(time.monotonic() - started, 3)}
    if timed_out:
        result["timed_out"] = True
        raise StepError(
            f"timed out after {spec.timeout:g}s ({_describe(code)})", result=result, exit_code=code
        )
    if code != 0:
        raise StepError(_describe(code), result=result, exit_code=code)
    return StepResult(result, exit_code=code)
