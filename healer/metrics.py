"""The healer's own Prometheus metrics, one registry per running healer (never global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HealerMetrics:
    """Counters the ingest and the executor update; `/metrics` exposes `registry`.

    `taskmedic_actions{state}` is read from the journal at scrape time by a collector that the
    web app registers, so it is true across replicas; the counters here are per process.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
        self.ingest_batch = Histogram(
            "taskmedic_ingest_batch_notifications",
            "Notifications recorded per journal transaction (POST /alerts group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
