"""Typed keys for what the healer's aiohttp application carries (see aiohttp's AppKey)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from healer.auth import Authenticator
from healer.config import HealerConfig
from healer.journal.ingest_writer import IngestWriter
from healer.metrics import HealerMetrics
from healer.rules import RuleSet

# The journal's connection pool; every request handler takes connections from here.
JOURNAL_POOL = web.AppKey("journal_pool", AsyncConnectionPool)
# Records POST /alerts notifications, several to a transaction under load (group commit).
INGEST_WRITER = web.AppKey("ingest_writer", IngestWriter)
# The journal's DSN, for code that needs a dedicated connection (LISTEN).
JOURNAL_DSN = web.AppKey("journal_dsn", str)
# The validated configuration (healer.config.HealerConfig).
CONFIG = web.AppKey("config", HealerConfig)
METRICS = web.AppKey("metrics", HealerMetrics)
# Who may post alerts and use the API (healer.auth.Authenticator).
AUTH = web.AppKey("auth", Authenticator)
# The loaded rules (healer.rules.RuleSet), read by POST /alerts.
RULES = web.AppKey("rules", RuleSet)
# Set on SIGTERM: POST /alerts answers 503 (Alertmanager retries elsewhere or later).
DRAINING = web.AppKey("draining", asyncio.Event)
