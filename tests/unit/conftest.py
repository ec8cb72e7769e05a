"""The unit tier: pure Python, fast. A test here that connects a socket, opens a PostgreSQL
connection (libpq opens its sockets in C, past the socket module) or starts a process fails,
naming what it tried: such a test belongs in tests/integration or tests/acceptance."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest


class TierViolation(AssertionError):
    """A unit test reached for the network or another process."""


def _refuse_connect(self: socket.socket, address: Any) -> None:
    raise TierViolation(f"a unit test connected a socket to {address!r}")


def _refuse_connect_ex(self: socket.socket, address: Any) -> int:
    raise TierViolation(f"a unit test connected a socket to {address!r}")


def _refuse_pg(cls: type, conninfo: str = "", *args: Any, **kw: Any) -> Any:
    raise TierViolation(f"a unit test opened a PostgreSQL connection ({cls.__name__})")


def _refuse_popen(self: subprocess.Popen[Any], args: Any, *more: Any, **kw: Any) -> None:
    raise TierViolation(f"a unit test started a process: {args!r}")


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_connect)
        mp.setattr(socket.socket, "connect_ex", _refuse_connect_ex)
        mp.setattr(subprocess.Popen, "__init__", _refuse_popen)
        mp.setattr(psycopg.Connection, "connect", classmethod(_refuse_pg))
        mp.setattr(psycopg.AsyncConnection, "connect", classmethod(_refuse_pg))
        mp.setattr(psycopg, "connect", psycopg.Connection.connect)  # an alias bound at import
        yield


# pytest calls a conftest's setup/call/teardown hooks only for the items beneath it.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _guarded():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _guarded():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if nextitem is None:
        # The run's last test: its teardown also ends the session's services (drops the
        # journal template, stops an embedded server), which is not this test's doing.
        return (yield)
    with _guarded():
        return (yield)
