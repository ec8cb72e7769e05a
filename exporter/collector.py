"""The Prometheus collector: fresh metric families from the runner's states on every scrape.

Nothing is mutated between scrapes; each scrape renders what the background collection knows
now. Finding gauges follow one rule: a check whose last collection succeeded exports a value
for every label set it owns (0 when it found nothing, every `reason` of orphan_tasks); a
check that cannot tell (down, not collected yet, or an orphan check with one observation so
far) exports no finding at all, so a missing series means "unknown" and never a stale count.
Celery liveness is computed at scrape time from the last heartbeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.base import __version__
from exporter.checks.orphan_tasks import REASONS
from exporter.runner import CheckState, Runner
from exporter.task_schedule import TaskStatus
from exporter.worker_presence import HEARTBEAT_RULE

__all__ = ["ExporterCollector"]


class ExporterCollector(Collector):
    """Renders a `Runner` as Prometheus metric families."""

    def __init__(self, runner: Runner, clock: Callable[[], float] = time.time) -> None:
        self._runner = runner
        self._clock = clock
        interval = runner.config.exporter.interval
        self._when = (
            f"as of the last background collection (every {interval:g}s, "
            "or the check's own interval)"
        )

    def _gauge(self, name: str, help_text: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, help_text, labels=labels)

    def collect(self) -> Iterable[Metric]:
        states = self._runner.states
        yield from self._checks(states)
        yield from self._self_metrics(states)
        yield from self._celery()
        info = self._gauge("taskmedic_build_info", "taskmedic version; always 1", ["version"])
        info.add_metric([__version__], 1.0)
        yield info

    def _checks(self, states: list[CheckState]) -> Iterable[Metric]:
        w = self._when
        stale = self._gauge(
            "taskmedic_stale_rows",
            f"Rows of a stale_status check older than its max_age (or NULL), {w}",
            ["check"],
        )
        stale_age = self._gauge(
            "taskmedic_stale_oldest_age_seconds",
            f"Age of the oldest timestamp a stale_status check's query returned, by the "
            f"database's clock (0 when it returned no row), {w}",
            ["check"],
        )
        orphans = self._gauge(
            "taskmedic_orphan_tasks",
            f"Rows of an orphan_tasks check past grace, on two consecutive collections, whose "
            f"Celery task is lost (nowhere) or finished (final state in the result backend); "
            f"unknown: rows past grace whose task could not be located (not orphans), {w}",
            ["check", "reason"],
        )
        orphan_age = self._gauge(
            "taskmedic_orphan_oldest_age_seconds",
            f"Age of the oldest orphan of an orphan_tasks check (0 when there is none), {w}",
            ["check"],
        )
        orphan_rows = self._gauge(
            "taskmedic_orphan_rows",
            f"Rows an orphan_rows check's query returned past grace on two consecutive "
            f"collections, {w}",
            ["check"],
        )
        for s in states:
            out = s.outcome
            if not s.up or out is None or not out.confirmed:
                continue
            if s.type == "stale_status":
                stale.add_metric([s.name], float(out.count()))
                stale_age.add_metric([s.name], out.oldest_age_seconds)
            elif s.type == "orphan_tasks":
                for reason in REASONS:
                    n = out.unknown if reason == "unknown" else out.count(reason)
                    orphans.add_metric([s.name, reason], float(n))
                orphan_age.add_metric([s.name], out.oldest_age_seconds)
            elif s.type == "orphan_rows":
                orphan_rows.add_metric([s.name], float(out.count()))
        yield from (stale, stale_age, orphans, orphan_age, orphan_rows)

    def _self_metrics(self, states: list[CheckState]) -> Iterable[Metric]:
        up = self._gauge(
            "taskmedic_check_up",
            "1 when the check's last background collection established the truth, 0 when it "
            "could not (database, broker or query failing or timing out: see the landing page)",
            ["check"],
        )
        duration = self._gauge(
            "taskmedic_check_duration_seconds",
            "Seconds the check's last background collection took, whatever its result",
            ["check"],
        )
        success = self._gauge(
            "taskmedic_check_last_success_timestamp_seconds",
            "Unix time the check's last successful background collection finished",
            ["check"],
        )
        for s in states:
            if s.up is None:
                continue  # not collected yet: nothing is known, not even failure
            up.add_metric([s.name], 1.0 if s.up else 0.0)
            if s.duration is not None:
                duration.add_metric([s.name], s.duration)
            if s.last_success is not None:
                success.add_metric([s.name], s.last_success)
        yield from (up, duration, success)

    def _celery(self) -> Iterable[Metric]:
        broker = self._gauge(
            "taskmedic_celery_broker_up",
            "1 while the exporter receives the cluster's event stream from its broker",
            ["cluster"],
        )
        workers = self._gauge(
            "taskmedic_celery_workers",
            "Workers of the cluster by liveness at scrape time (offline ones are counted until "
            "purge_offline_after)",
            ["cluster", "state"],
        )
        worker_up = self._gauge(
            "taskmedic_celery_worker_up",
            "1 while the worker's heartbeats arrive in time (Celery's rule: last heartbeat + "
            "2 x its interval), judged at scrape time; 0 once offline, or as soon as the broker "
            "shows its connection closed and it does not answer ping (a clean stop is dropped "
            "after purge_offline_after, a crash is kept); absent while broker_up is 0",
            ["cluster", "worker"],
        )
        method = self._gauge(
            "taskmedic_celery_liveness_method",
            "1 for the way a killed worker is detected right now: broker_signal (its broker "
            "connection closed, confirmed by ping) or heartbeat_rule (2 x its interval)",
            ["cluster", "method"],
        )
        dropped = CounterMetricFamily(
            "taskmedic_celery_workers_dropped",
            "Worker hostnames ignored since the exporter started because the cluster's worker "
            "table was full",
            labels=["cluster"],
        )
        crashed = self._gauge(
            "taskmedic_celery_worker_crashed",
            "1 when the worker went offline without a goodbye (killed, hung, cut off), 0 while "
            "online or after a clean stop; kept until the worker comes back",
            ["cluster", "worker"],
        )
        heartbeat = self._gauge(
            "taskmedic_celery_worker_last_heartbeat_timestamp_seconds",
            "Unix time (the exporter's clock) the worker was last heard from",
            ["cluster", "worker"],
        )
        tasks = _TaskFamilies(self._gauge)
        events = CounterMetricFamily(
            "taskmedic_celery_task_events",
            "Task events the exporter received from the cluster since it started, from any "
            "worker (0 while it runs: workers send none, start them with -E or set "
            "enable_events)",
            labels=["cluster"],
        )
        for snap in self._runner.clusters(self._clock()):
            events.add_metric([snap.cluster], float(snap.task_events))
            tasks.add(snap.cluster, snap.tasks)
            broker.add_metric([snap.cluster], 1.0 if snap.broker_up else 0.0)
            dropped.add_metric([snap.cluster], float(snap.workers_dropped))
            signal = snap.liveness_method != HEARTBEAT_RULE
            method.add_metric([snap.cluster, "broker_signal"], 1.0 if signal else 0.0)
            method.add_metric([snap.cluster, "heartbeat_rule"], 0.0 if signal else 1.0)
            if not snap.broker_up:
                continue  # liveness unknown: no worker series rather than a false 0
            online = sum(1 for w in snap.workers if w.online)
            workers.add_metric([snap.cluster, "online"], float(online))
            workers.add_metric([snap.cluster, "offline"], float(len(snap.workers) - online))
            for w in snap.workers:
                worker_up.add_metric([snap.cluster, w.hostname], 1.0 if w.online else 0.0)
                crashed.add_metric([snap.cluster, w.hostname], 1.0 if w.crashed else 0.0)
                heartbeat.add_metric([snap.cluster, w.hostname], w.last_heartbeat)
        yield from (broker, workers, worker_up, crashed, heartbeat, events, method, dropped)
        yield from tasks.families()


class _TaskFamilies:
    """The per-task series of declared periodic tasks. A time never seen since the exporter
    started is absent (unknown), never 0; nothing at all is exported while the cluster's
    event stream is down."""

    def __init__(self, gauge: Callable[[str, str, list[str]], GaugeMetricFamily]) -> None:
        labels = ["cluster", "task"]
        last = "Unix time (the exporter's clock) the declared task was last"
        self.received = gauge(
            "taskmedic_celery_task_last_received_timestamp_seconds",
            f"{last} received by a worker",
            labels,
        )
        self.started = gauge(
            "taskmedic_celery_task_last_started_timestamp_seconds", f"{last} started", labels
        )
        self.succeeded = gauge(
            "taskmedic_celery_task_last_succeeded_timestamp_seconds",
            f"{last} reported succeeded",
            labels,
        )
        self.failed = gauge(
            "taskmedic_celery_task_last_failed_timestamp_seconds",
            f"{last} reported failed",
            labels,
        )
        self.every = gauge(
            "taskmedic_celery_task_expected_interval_seconds",
            "The declared task's expect_every: it must succeed at least this often",
            labels,
        )
        self.overdue = gauge(
            "taskmedic_celery_task_overdue",
            "1 when the declared task has not succeeded within expect_every + grace of its last "
            "success (or of the moment the exporter started watching), 0 otherwise",
            labels,
        )

    def add(self, cluster: str, statuses: Iterable[TaskStatus]) -> None:
        for t in statuses:
            key = [cluster, t.name]
            for family, value in (
                (self.received, t.last_received),
                (self.started, t.last_started),
                (self.succeeded, t.last_succeeded),
                (self.failed, t.last_failed),
            ):
                if value is not None:
                    family.add_metric(key, value)
            self.every.add_metric(key, t.expect_every)
            self.overdue.add_metric(key, 1.0 if t.overdue else 0.0)

    def families(self) -> Iterable[Metric]:
        return (self.received, self.started, self.succeeded, self.failed, self.every, self.overdue)
