"""A real `taskmedic healer` process on a fresh journal, for the healer and log benchmarks."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

import psycopg
import yaml

from bench.env import BenchEnv
from bench.harness import Proc, http_get, log, serve_on_free_port


@dataclass
class Healer:
    proc: Proc
    port: int
    dsn: str
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def batches(self) -> tuple[float, float]:
        """(transactions, notifications) its ingest committed so far (its /metrics)."""
        sample = re.compile(r"^taskmedic_ingest_batch_notifications_(sum|count) (\S+)$", re.M)
        got = {
            m.group(1): float(m.group(2)) for m in sample.finditer(http_get(self.url + "/metrics"))
        }
        return got.get("count", 0.0), got.get("sum", 0.0)


def start_healer(
    env: BenchEnv,
    name: str,
    rules: list[dict[str, Any]],
    *,
    healer: dict[str, Any] | None = None,
    dsn: str | None = None,
) -> Healer:
    """Migrate a fresh journal, write the config and rules, start the healer, wait for /readyz."""
    from healer.journal.migrate import upgrade

    dsn = dsn or env.database()
    asyncio.run(upgrade(dsn))
    token = secrets.token_urlsafe(24)
    rules_path = env.path(f"{name}-rules.yaml")
    rules_path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    cfg = env.path(f"{name}.yaml")

    def start(port: int) -> Proc:
        config = {
            "healer": {
                "listen": f"127.0.0.1:{port}",
                "journal": {"dsn": dsn},
                "data_dir": str(env.path(f"{name}-data")),
                # The benchmarks read the log with the same token.
                "auth": {"bearer_token": token, "alertmanager_roles": ["post_alerts", "read"]},
                "rules": [str(rules_path)],
                **(healer or {}),
            }
        }
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "healer.cli", "healer", "--config", str(cfg)]
        return env.proc(argv, name)

    proc, port = serve_on_free_port(start, "/readyz", f"{name} /readyz")
    log(f"{name}: healer pid {proc.pid} on 127.0.0.1:{port}")
    return Healer(proc, port, dsn, token)
