"""`GET /api/actions/{id}/log`: an action's output as text, or followed live as Server-Sent Events.

Text: every chunk in order (`?stream=stdout|stderr|system`, `?step=N`, `?host=NAME` narrow it
down), bytes decoded as UTF-8 with U+FFFD shown where they are not UTF-8 (a multi-byte character
split between two chunks of one stream is decoded whole). Each line a host run printed (a step
with `on: {hosts: …}`) starts with `[host] `; the healer's own lines have no prefix.

Events (`Accept: text/event-stream` or `?follow=1`): one event per chunk, `id:` the chunk id,
`event:` its stream, `data:` its text (unprefixed); an `event: step` (data `{"step": N}`, plus
`"host": NAME` for a host run's output, no id) before the first chunk of each step and whenever
the host whose output follows changes, so every chunk is known with its step and host; and once
the action reaches a final state, `event: end` (data `{"state": …}`) and the stream closes. A
reconnect with `Last-Event-ID` (or `?after=ID`) continues after that chunk with no gap and no
repeat. Every follower is fed by this process's `LogHub` (one journal query per chunk, shared),
so any replica can serve any action's log.

Followers hold a connection and a buffer each for as long as they like, so they are counted:
past `healer.limits.followers` in this process a new one gets 503, past
`followers_per_client` from one address 429, both with Retry-After.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from psycopg_pool import AsyncConnectionPool

from healer import appkeys
from healer.actions import ActionNotFound
from healer.errors import JournalUnavailable
from healer.journal import logs
from healer.journal.pool import journal_errors
from healer.log_hub import Chunk, End, LogHub
from healer.url_numbers import MAX_ID, parse_number

__all__ = ["LOG_HUB", "HubSlot", "LinePrefixer", "hub_of", "iter_log_text", "setup"]

log = logging.getLogger(__name__)

STREAMS = frozenset({"stdout", "stderr", "system"})
PAGE = 500
MAX_HOST = 255  # a host name longer than this is no host
GONE_POLL = 0.5  # seconds between checks that a follower's connection is still open


@dataclass
class HubSlot:
    """Holds the process's LogHub, created on first use (the pool is opened at startup)."""

    hub: LogHub | None = None


LOG_HUB = web.AppKey("log_hub", HubSlot)


class Followers:
    """Live followers of this process, in all and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.by_client: dict[str, int] = {}

    @contextlib.contextmanager
    def admit(self, client: str, total: int, per_client: int) -> Iterator[None]:
        """Count one follower of `client` while the block runs; refuse it past a limit."""
        if self.by_client.get(client, 0) >= per_client:
            raise _too_many(
                web.HTTPTooManyRequests,
                f"more than healer.limits.followers_per_client ({per_client}) live logs "
                "followed from this address",
            )
        if self.total >= total:
            raise _too_many(
                web.HTTPServiceUnavailable,
                f"more than healer.limits.followers ({total}) live logs followed",
            )
        self.total += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        try:
            yield
        finally:
            self.total -= 1
            left = self.by_client[client] - 1
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]  # the table holds live clients only


def _too_many(kind: type[web.HTTPException], text: str) -> web.HTTPException:
    return kind(text=text, headers={"Retry-After": str(FOLLOWERS_RETRY_AFTER)})


FOLLOWERS = web.AppKey("log_followers", Followers)
FOLLOWERS_RETRY_AFTER = 5


def hub_of(app: web.Application) -> LogHub:
    """This process's log hub, created with the app's journal pool and DSN on first use."""
    slot = app[LOG_HUB]
    if slot.hub is None:
        slot.hub = LogHub(
            app[appkeys.JOURNAL_DSN], app[appkeys.JOURNAL_POOL], health=app[appkeys.METRICS].loops
        )
    return slot.hub


def setup(app: web.Application) -> None:
    """Add the log routes, and stop the hub when the app shuts down (streams then end)."""
    app[LOG_HUB] = HubSlot()
    app[FOLLOWERS] = Followers()
    app.router.add_get(r"/api/actions/{id:[0-9]+}/log", get_log)
    app.on_shutdown.append(_stop_hub)


async def _stop_hub(app: web.Application) -> None:
    slot = app[LOG_HUB]
    if slot.hub is not None:
        await slot.hub.stop()


# --- request parsing ------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    stream: str | None = None
    step: int | None = None
    host: str | None = None  # None: every host and the healer's own output

    def keeps(self, c: Chunk) -> bool:
        return (
            (self.stream is None or c.stream == self.stream)
            and (self.step is None or c.step == self.step)
            and (self.host is None or c.host == self.host)
        )


def _nonneg_int(value: str, what: str, maximum: int = MAX_ID) -> int:
    number = parse_number(value, maximum)
    if number is None:
        raise web.HTTPBadRequest(
            text=f"{what}: expected an integer from 0 to {maximum}, got {value[:40]!r}"
        )
    return number


def _filter(request: web.Request) -> LogFilter:
    stream = request.query.get("stream") or None
    if stream is not None and stream not in STREAMS:
        raise web.HTTPBadRequest(
            text=f"stream: expected one of {', '.join(sorted(STREAMS))}, got {stream!r}"
        )
    step_s = request.query.get("step")
    # A step index is an integer column in the journal.
    step = _nonneg_int(step_s, "step", 2**31 - 1) if step_s else None
    host = request.query.get("host") or None
    if host is not None and (len(host) > MAX_HOST or not host.isprintable()):
        raise web.HTTPBadRequest(
            text=f"host: expected a host name of at most {MAX_HOST} characters"
        )
    return LogFilter(stream, step, host)


def _wants_events(request: web.Request) -> bool:
    if request.query.get("follow", "").lower() in ("1", "true", "yes"):
        return True
    return "text/event-stream" in request.headers.get("Accept", "")


async def _action_state(pool: AsyncConnectionPool[Any], action_id: int) -> str:
    try:
        with journal_errors(f"action {action_id}"):
            async with pool.connection() as conn:
                state = await logs.action_state(conn, action_id)
    except JournalUnavailable as e:
        raise web.HTTPServiceUnavailable(text="the journal is unavailable") from e
    if state is None:
        raise web.HTTPNotFound(text=f"no action {action_id}")
    return state


# --- the whole log as text ------------------------------------------------------------------


class TextDecoder:
    """UTF-8 per (step, host, stream), so a character split across two chunks is decoded whole."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[int, str, str], codecs.IncrementalDecoder] = {}

    def decode(self, c: Chunk) -> str:
        key = (c.step, c.host, c.stream)
        d = self._decoders.get(key)
        if d is None:
            d = self._decoders[key] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return d.decode(c.data)

    def flush(self) -> str:
        """What is left of incomplete sequences at the end, shown as U+FFFD."""
        return "".join(d.decode(b"", final=True) for d in self._decoders.values())


_LINES = re.compile(r"[^\n]*\n|[^\n]+")


class LinePrefixer:
    """Starts each line of a host run's output with `[host] ` (the healer's own lines stay as
    they are). Hosts' chunks interleave, so whether a line is open is kept per (step, host,
    stream): a line continued in the host's next chunk is not prefixed twice."""

    def __init__(self) -> None:
        self._open: set[tuple[int, str, str]] = set()

    def prefix(self, c: Chunk, text: str) -> str:
        if not c.host or not text:
            return text
        key = (c.step, c.host, c.stream)
        tag = f"[{c.host}] "
        lines = _LINES.findall(text)
        out = [line if i == 0 and key in self._open else tag + line for i, line in enumerate(lines)]
        if text.endswith("\n"):
            self._open.discard(key)
        else:
            self._open.add(key)
        return "".join(out)


async def iter_log_text(
    pool: AsyncConnectionPool[Any], action_id: int, flt: LogFilter = LogFilter()
) -> AsyncIterator[Chunk]:
    """Every chunk of the action's log that `flt` keeps, in order, read page by page."""
    after = 0
    while True:
        with journal_errors(f"log of action {action_id}"):
            async with pool.connection() as conn:
                chunks = await logs.text_page(
                    conn,
                    action_id,
                    after=after,
                    stream=flt.stream,
                    step=flt.step,
                    host=flt.host,
                    limit=PAGE,
                )
        for c in chunks:
            yield c
        if len(chunks) < PAGE:
            return
        after = chunks[-1].id


async def _text(request: web.Request, action_id: int, flt: LogFilter) -> web.StreamResponse:
    pool = request.app[appkeys.JOURNAL_POOL]
    state = await _action_state(pool, action_id)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Taskmedic-Action-State": state,
        }
    )
    dec = TextDecoder()
    tags = LinePrefixer()
    chunks = iter_log_text(pool, action_id, flt)
    try:
        first = await anext(chunks, None)
    except JournalUnavailable as e:
        raise web.HTTPServiceUnavailable(text="the journal is unavailable") from e
    await resp.prepare(request)
    try:
        if first is not None:
            await resp.write(tags.prefix(first, dec.decode(first)).encode())
            async for c in chunks:
                text = tags.prefix(c, dec.decode(c))
                if text:
                    await resp.write(text.encode())
        await resp.write(dec.flush().encode())
    except JournalUnavailable:
        # Headers are sent: cut the body short so the client sees an incomplete response.
        log.warning("journal lost while sending the log of action %s", action_id)
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


# --- following as Server-Sent Events --------------------------------------------------------


def _after(request: web.Request) -> int:
    last = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    return _nonneg_int(last.strip(), "Last-Event-ID")


async def send_events(
    resp: EventSourceResponse, hub: LogHub, action_id: int, after: int, flt: LogFilter
) -> None:
    """Send the action's chunks as events until it ends (`end` event) or the hub stops."""
    dec = TextDecoder()
    at: tuple[int, str] | None = None  # the (step, host) of the last chunk sent
    async with contextlib.aclosing(hub.follow(action_id, after)) as items:
        async for item in items:
            if isinstance(item, End):
                await resp.send(json.dumps({"state": item.state}), event="end")
                return
            if not flt.keeps(item):
                continue
            if (item.step, item.host) != at:
                at = (item.step, item.host)
                mark: dict[str, Any] = {"step": item.step}
                if item.host:
                    mark["host"] = item.host
                await resp.send(json.dumps(mark), event="step")
            # Even an empty text (half a character) carries the id, so a resume skips it.
            await resp.send(dec.decode(item), id=str(item.id), event=item.stream)


async def _client_gone(request: web.Request, resp: EventSourceResponse) -> None:
    """Returns once the connection closed (aiohttp does not cancel the handler by itself)."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing() or not resp.is_connected():
            return
        await asyncio.sleep(GONE_POLL)


async def _follow(request: web.Request, action_id: int, flt: LogFilter) -> web.StreamResponse:
    limits = request.app[appkeys.CONFIG].healer.limits
    admitted = request.app[FOLLOWERS].admit(
        request.remote or "", limits.followers, limits.followers_per_client
    )
    with admitted:
        return await _follow_admitted(request, action_id, flt)


async def _follow_admitted(
    request: web.Request, action_id: int, flt: LogFilter
) -> web.StreamResponse:
    after = _after(request)
    await _action_state(request.app[appkeys.JOURNAL_POOL], action_id)
    try:
        hub = hub_of(request.app)
        hub.start()
    except RuntimeError as e:  # the hub stopped: this process is shutting down
        raise web.HTTPServiceUnavailable(text="shutting down") from e
    async with sse_response(request, ping_interval=10) as resp:
        sender = asyncio.create_task(send_events(resp, hub, action_id, after, flt))
        # Stop following as soon as the client has gone, not at the next chunk it cannot take.
        gone = asyncio.create_task(_client_gone(request, resp))
        try:
            await asyncio.wait({sender, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sender, gone):
                t.cancel()
            await asyncio.gather(sender, gone, return_exceptions=True)
        exc = None if sender.cancelled() else sender.exception()
        if isinstance(exc, JournalUnavailable | ActionNotFound):
            log.warning("log stream of action %s ended: %s", action_id, exc)
        elif isinstance(exc, ConnectionResetError | TimeoutError):
            pass  # the client went away or stalled; it resumes by Last-Event-ID
        elif exc is not None:
            raise exc
    return resp


async def get_log(request: web.Request) -> web.StreamResponse:
    """The action's output: text, or Server-Sent Events when followed (see the module doc)."""
    action_id = _nonneg_int(request.match_info["id"], "id")
    flt = _filter(request)
    if _wants_events(request):
        return await _follow(request, action_id, flt)
    return await _text(request, action_id, flt)
