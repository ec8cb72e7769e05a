-- Recording webhook notifications (healer/ingest.py, healer/journal/ingest_writer.py).
-- Everything one notification records (the notification, its alerts and every action it
-- starts) is written by ONE statement, so it commits together or not at all, with the other
-- notifications of its batch: taskmedic_ingest (migration 0002) does the work for each.

-- name: ingest_batch
-- Notifications that arrived together, in one statement and one transaction (group commit,
-- healer/journal/ingest_writer.py; `items` as taskmedic_ingest_batch of migration 0003 takes
-- them). First the rule+target advisory locks of all of them (`locks`: [[rule, target], ...]),
-- each once, in the order of their lock keys: two batches touching the same targets take them
-- in the same order and can never wait on each other in a cycle. The locks serialise
-- cooldown and circuit-breaker decisions for one rule and target across requests and healer
-- processes, and are released at COMMIT. The aggregate takes every lock before its one row
-- reaches taskmedic_ingest_batch, whose statements (it is VOLATILE) then see every action
-- committed before the locks were granted.
SELECT taskmedic_ingest_batch(p_items => %(items)s, p_actor => %(actor)s)
FROM (
    SELECT count(pg_advisory_xact_lock(l.key))
    FROM (
        SELECT DISTINCT hashtext((k.key ->> 0) || chr(31) || (k.key ->> 1)) AS key
        FROM jsonb_array_elements(%(locks)s) AS k (key)
        ORDER BY 1
    ) AS l
) AS locked
