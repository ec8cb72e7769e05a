"""Fixtures shared by the healer's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from healer.journal.migrate import upgrade


@pytest.fixture
async def journal(pg_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A migrated journal and an autocommit connection to it.

    The executor tests import their own `journal` fixture (the DSN) from journal_helpers,
    which takes precedence in those modules.
    """
    await upgrade(pg_dsn)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        yield conn
