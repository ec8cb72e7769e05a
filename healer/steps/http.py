"""The `http` step: one request to an application's own API, the right repair when the app
does more than a row update (ibex's cancel also settles the hosts still waiting).

Secrets never enter the plan: the plan names the files holding a password or a header value,
and they are read when the step runs, so the journal, the plan hash and the console never
see them. The body is JSON rendered from declared parameters; the answer must have an
expected status and, when given, contain the expected JSON keys (apps such as ibex answer 200
with an error text in the body).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from exporter.base.connections import read_secret
from exporter.base.types import mask_dsn
from healer.errors import StepFailed
from healer.plan import HttpSpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import MAX_REPR, StepResult, jsonable

__all__ = ["run_http", "send_http"]

# How much of an answer is read, kept and shown.
MAX_BODY = 64 * 1024


def _headers(spec: HttpSpec) -> dict[str, str]:
    """The request's headers, secrets read from their files now."""
    try:
        headers = dict(spec.headers)
        for name, file in spec.header_files.items():
            headers[name] = read_secret(Path(file), f"the file of header {name}")
        if spec.basic_auth is not None:
            password = read_secret(Path(spec.basic_auth.password_file), "the password file")
            pair = f"{spec.basic_auth.username}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    except ValueError as exc:
        raise StepFailed(str(exc)) from None
    return headers


def _expected(spec: HttpSpec, status: int, body: Any) -> str | None:
    """Why the answer is not what the step expects, or None when it is."""
    if spec.expect_status is not None and status not in spec.expect_status:
        return f"status {status}, expected {' or '.join(map(str, spec.expect_status))}"
    if spec.expect_status is None and not 200 <= status < 300:
        return f"status {status}, expected 2xx"
    if spec.expect_json is None:
        return None
    if not isinstance(body, dict):
        return "the answer is not a JSON object"
    for key, want in spec.expect_json.items():
        if key not in body or body[key] != want:
            got = repr(body.get(key))[:200] if key in body else "missing"
            return f"{key} is {got}, expected {want!r}"
    return None


async def _read_up_to(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to `limit` bytes (one `read(n)` returns what is buffered, maybe less)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await stream.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


async def send_http(
    spec: HttpSpec, output: StepOutput, session: aiohttp.ClientSession | None = None
) -> dict[str, Any]:
    """Send the request and check the answer; returns what the journal records of it."""
    headers = _headers(spec)
    shown = f"{spec.method} {mask_dsn(spec.url)}"
    body = None if spec.body is None else orjson.dumps(spec.body)
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.request(
            spec.method,
            spec.url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=spec.timeout),
            allow_redirects=False,
        ) as resp:
            raw = await _read_up_to(resp.content, MAX_BODY)
            status = resp.status
    except TimeoutError:
        raise StepFailed(f"{shown}: no answer within {spec.timeout:g}s") from None
    except (aiohttp.ClientError, ValueError) as exc:
        # The exception's text may quote the URL; the masked one is shown instead.
        raise StepFailed(f"{shown}: {type(exc).__name__}") from None
    finally:
        if own:
            await client.close()
    try:
        answer: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        answer = raw[:MAX_REPR].decode("utf-8", "backslashreplace")
    record = {"request": shown, "status": status, "answer": jsonable(answer)}
    output.system(f"{shown}: {status}")
    wrong = _expected(spec, status, answer)
    if wrong is not None:
        raise StepFailed(f"{shown}: {wrong}", result=record)
    return record


async def run_http(spec: HttpSpec, output: StepOutput) -> StepResult:
    """The `http` step: one request, its answer recorded; a wrong answer fails the step."""
    return StepResult(await send_http(spec, output))
