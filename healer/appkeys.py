"""Typed keys for what the healer's aiohttp application carries (see aiohttp's AppKey)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from healer.metrics import HealerMetrics

# The journal's connection pool; every request handler takes connections from here.
JOURNAL_POOL = web.AppKey("journal_pool", AsyncConnectionPool)
# The journal's DSN, for code that needs a dedicated connection (LISTEN).
JOURNAL_DSN = web.AppKey("journal_dsn", str)
# The validated configuration (healer.config.HealerConfig).
CONFIG = web.AppKey("config", Any)
METRICS = web.AppKey("metrics", HealerMetrics)
# AUTH (healer.auth.Authenticator) is added by healer/auth.py's owner.
