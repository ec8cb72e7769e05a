"""The healer's own Prometheus metrics, one registry per running healer (never global): the
per-process counters and the journal's gauges, read at scrape time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from healer.errors import JournalUnavailable
from healer.journal import stats
from healer.journal.actions import STATES
from healer.journal.pool import journal_errors
from healer.supervise import LoopHealth

if TYPE_CHECKING:
    from healer.rules import RuleSet

__all__ = ["HealerMetrics", "JournalGauges"]

log = logging.getLogger(__name__)


class HealerMetrics:
    """Counters the ingest and the executor update; `/metrics` exposes `registry`.

    `taskmedic_actions{state}` is read from the journal at scrape time by a collector that the
    web app registers, so it is true across replicas; the counters here are per process.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.loop_up = Gauge(
            "taskmedic_healer_loop_up",
            "1 while a background loop of this process runs, 0 while it waits to start again "
            "after an unexpected error (then /readyz answers 503).",
            ["loop"],
            registry=self.registry,
        )
        self.loop_failures = Counter(
            "taskmedic_healer_loop_failures",
            "Unexpected errors that stopped a background loop (it is started again).",
            ["loop"],
            registry=self.registry,
        )
        self.loops = LoopHealth(self.loop_up, self.loop_failures)
        self.alerts_received = Counter(
            "taskmedic_alerts_received",
            "Alerts received from Alertmanager, by alert status.",
            ["status"],
            registry=self.registry,
        )
        self.alerts_truncated = Counter(
            "taskmedic_alerts_truncated",
            "Alerts Alertmanager left out of notifications (truncatedAlerts).",
            registry=self.registry,
        )
        self.actions_total = Counter(
            "taskmedic_actions",
            "Actions that reached a final state, by rule and outcome.",
            ["rule", "outcome"],
            registry=self.registry,
        )
        self.action_duration = Histogram(
            "taskmedic_action_duration_seconds",
            "Wall time of actions from start to final state, by rule.",
            ["rule"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.rule_circuit_open = Gauge(
            "taskmedic_rule_circuit_open",
            "1 while a rule's circuit breaker refuses new actions (limit reached).",
            ["rule"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "taskmedic_auth_failures",
            "Requests refused for wrong credentials, by what was wrong: bearer, basic, login "
            "(the console's form) or session (an expired or forged cookie).",
            ["reason"],
            registry=self.registry,
        )
        self.auth_throttled = Counter(
            "taskmedic_auth_throttled",
            "Requests answered 429 without checking their credentials: too many wrong ones.",
            registry=self.registry,
        )
        self.agent_runs = Counter(
            "taskmedic_agent_runs",
            "Host runs of steps on other hosts by how they ended (succeeded, failed, "
            "timed_out, interrupted, cancelled, skipped), per host queue.",
            ["queue", "outcome"],
            registry=self.registry,
        )
        self.agent_up = Gauge(
            "taskmedic_agent_up",
            "1 when an agent serving this host's queue answered the healer's last ping, 0 "
            "when none did; absent while the healer cannot reach the agents' broker.",
            ["queue"],
            registry=self.registry,
        )
        self.ingest_batch = Histogram(
            "taskmedic_ingest_batch_notifications",
            "Notifications recorded per journal transaction (POST /alerts group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )


class JournalGauges(Collector):
    """`taskmedic_actions{state}` and open circuits, read from the journal at scrape time.

    Read at most once a second whatever the scrape rate, and true across replicas because it
    counts the journal, not this process. When the journal cannot be read the gauge is left
    out (unknown) and `taskmedic_journal_up` is 0: never a false zero.
    """

    def __init__(
        self,
        metrics: HealerMetrics,
        rules: Callable[[], RuleSet],
        pool: Callable[[], AsyncConnectionPool[Any]],
        ttl: float = 1.0,
    ) -> None:
        self._metrics = metrics
        self._rules = rules  # read at each refresh: the app holds the current ones
        self._pool = pool
        self._ttl = ttl
        self._at = -float("inf")
        self._lock = asyncio.Lock()
        self.counts: dict[str, int] | None = None

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._at < self._ttl:
                return
            self._at = time.monotonic()
            metrics = self._metrics
            limited = [r.rule for r in self._rules() if r.rule.limit is not None]
            try:
                with journal_errors():
                    async with self._pool().connection() as conn:
                        counts = await stats.actions_by_state(conn)
                        open_rules = await stats.open_circuits(
                            conn, [(r.name, r.limit.count, r.limit.per) for r in limited if r.limit]
                        )
            except JournalUnavailable as exc:
                log.warning("cannot read action counts: %s", exc)
                self.counts = None
                return
            self.counts = counts
            for r in limited:
                metrics.rule_circuit_open.labels(r.name).set(1 if r.name in open_rules else 0)

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed names: `taskmedic_actions` shares its stem with the counter

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "taskmedic_journal_up", "1 when the last scrape could read the journal."
        )
        up.add_metric([], 0 if self.counts is None else 1)
        yield up
        if self.counts is None:
            return
        g = GaugeMetricFamily(
            "taskmedic_actions",
            "Actions in the journal by state, counted at scrape time (cached for 1 s).",
            labels=["state"],
        )
        for state in STATES:
            g.add_metric([state], self.counts.get(state, 0))
        yield g
