"""Group commit: notifications that arrive while the journal is busy share one transaction,
and each is still recorded, decided and answered exactly as if it had been alone."""

from __future__ import annotations

import asyncio
import functools
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from healer import appkeys
from healer.app import create_app
from healer.metrics import HealerMetrics
from tests.services import wait_for
from tests.support.ingest_helpers import AUTH, config_for, journal_counts, payload, rows, with_alert

Client = TestClient[Any, Any]

# One rule and one target for every alert below (the target is the label set, and only
# startsAt differs), so every notification needs the same rule+target lock.
RULES = textwrap.dedent(
    """\
    rules:
      - name: refresh-tree-status
        match: {alertname: TaskmedicStaleRows}
        cooldown: 10m
        steps:
          - name: rebuild cache
            script: {argv: [/bin/echo, rebuilt]}
    """
)
TARGET = (
    '{"alertname":"TaskmedicStaleRows","check":"tree_status_cache",'
    '"instance":"exporter-1:9808","job":"taskmedic","severity":"warning"}'
)


def firing(i: int, receiver: str = "taskmedic") -> dict[str, Any]:
    """The stale-rows firing, started `i` seconds after the original: a distinct action key."""
    body = with_alert(payload("firing_stale_rows"), startsAt=f"2024-05-14T09:21:{i:02d}Z")
    body["receiver"] = receiver
    return body


async def post(client: Client, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post("/alerts", json=body, headers=AUTH)
    return resp.status, (await resp.json() if resp.content_type == "application/json" else None)


@pytest.fixture
def metrics() -> HealerMetrics:
    return HealerMetrics(CollectorRegistry())


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    journal_dsn: str,
    tmp_path: Path,
    metrics: HealerMetrics,
) -> Client:
    config = config_for(tmp_path, journal_dsn, rules=RULES)
    app = create_app(config, dsn=journal_dsn, run_executor=False, metrics=metrics)
    return await aiohttp_client(app)


@pytest.fixture
def target_lock(journal_dsn: str) -> Iterator[Callable[[], None]]:
    """Holds the rule+target lock every ingest below needs; call the result to let go."""
    with psycopg.connect(journal_dsn, autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s || chr(31) || %s))",
            ("refresh-tree-status", TARGET),
        )

        def release() -> None:
            blocker.execute("ROLLBACK")

        yield release
        if blocker.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            blocker.execute("ROLLBACK")


def lock_waiters(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s AND datname = current_database()",
            ("%pg_advisory_xact_lock%",),
        ).fetchone()
    return int(row[0]) if row else 0


def writers_waiting(dsn: str, n: int) -> bool:
    return lock_waiters(dsn) == n


async def storm_behind_the_lock(
    client: Client, journal_dsn: str, release: Callable[[], None], bodies: list[dict[str, Any]]
) -> list[tuple[int, Any]]:
    """Post `bodies` while both writers wait for the lock, then let go: the rest queue.

    The first two go one at a time, so the first body is the first to get the lock."""
    writer = client.app[appkeys.INGEST_WRITER]
    first = []
    for n, body in enumerate(bodies[:2], 1):
        first.append(asyncio.ensure_future(post(client, body)))
        await asyncio.to_thread(
            wait_for,
            functools.partial(writers_waiting, journal_dsn, n),
            10,
            0.02,
            f"{n} writers waiting",
        )
    rest = [asyncio.ensure_future(post(client, b)) for b in bodies[2:]]
    queued = len(bodies) - 2
    await asyncio.to_thread(wait_for, lambda: writer.queued == queued, 10, 0.01, "the queue")
    release()
    return list(await asyncio.gather(*first, *rest))


def batches(metrics: HealerMetrics) -> tuple[float | None, float | None]:
    """(transactions, notifications) the ingest committed."""
    get = metrics.registry.get_sample_value
    return (
        get("taskmedic_ingest_batch_notifications_count"),
        get("taskmedic_ingest_batch_notifications_sum"),
    )


async def test_a_storm_shares_transactions_and_each_alert_is_decided_in_arrival_order(
    client: Client, journal_dsn: str, target_lock: Callable[[], None], metrics: HealerMetrics
) -> None:
    """Twelve firings of one target while the journal is busy: ten wait and go together in
    one transaction; the first firing starts the action and every later one, in the same
    batch or not, sees it and is skipped by the cooldown."""
    bodies = [firing(i) for i in range(12)]
    results = await storm_behind_the_lock(client, journal_dsn, target_lock, bodies)

    assert [s for s, _ in results] == [200] * 12
    assert batches(metrics) == (3.0, 12.0)  # the two that waited, then the ten queued
    states = [b["actions"][0]["state"] for _, b in results]
    assert states == ["pending"] + ["skipped"] * 11
    assert journal_counts(journal_dsn) == {
        "notifications": 12,
        "alerts": 12,
        "actions": 12,
        "steps": 12,
        "events": 12,
    }
    # Each answer names the action of its own alert.
    for (_, body), sent in zip(results, bodies, strict=True):
        [(starts_at,)] = rows(
            journal_dsn, "SELECT starts_at FROM actions WHERE id = %s", (body["actions"][0]["id"],)
        )
        assert starts_at.strftime("%H:%M:%S") == sent["alerts"][0]["startsAt"][11:19]


async def test_copies_of_one_firing_in_one_batch_give_one_action(
    client: Client, journal_dsn: str, target_lock: Callable[[], None], metrics: HealerMetrics
) -> None:
    """The HA pair's copies and Alertmanager's retries, queued together: one action."""
    results = await storm_behind_the_lock(client, journal_dsn, target_lock, [firing(1)] * 8)
    assert [s for s, _ in results] == [200] * 8
    assert batches(metrics) == (3.0, 8.0)
    assert sum(len(b["actions"]) for _, b in results) == 1
    assert sum(len(b["duplicates"]) for _, b in results) == 7
    assert journal_counts(journal_dsn)["actions"] == 1


async def test_a_notification_the_journal_refuses_fails_alone(
    client: Client, journal_dsn: str, target_lock: Callable[[], None]
) -> None:
    """A notification PostgreSQL refuses (here a trigger refuses its receiver) in a batch of
    good ones: the batch is written again one by one, the good ones are recorded and
    answered 200, and only the refused one is an error, with nothing of it written."""
    with psycopg.connect(journal_dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.receiver = 'poison' THEN RAISE EXCEPTION 'refused'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON notifications
                FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    bodies = [firing(i, receiver="poison" if i == 4 else "taskmedic") for i in range(7)]
    results = await storm_behind_the_lock(client, journal_dsn, target_lock, bodies)

    statuses = [s for s, _ in results]
    assert statuses == [200] * 4 + [500] + [200] * 2
    assert rows(journal_dsn, "SELECT DISTINCT receiver FROM notifications") == [("taskmedic",)]
    assert journal_counts(journal_dsn)["notifications"] == 6
    assert journal_counts(journal_dsn)["actions"] == 6
