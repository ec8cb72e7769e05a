-- Log retention (healer/journal/retention.py): log chunks older than the cutoff are deleted in
-- batches, and raw webhook payloads older than it emptied; alerts (with their labels and
-- annotations), actions, steps (with their true output byte counts) and events are kept.

-- name: prune_cutoff
SELECT now() - make_interval(secs => %(seconds)s)

-- name: prune_log_count
SELECT count(*), coalesce(sum(octet_length(data)), 0), count(DISTINCT action_id)
FROM log_chunks
WHERE at < %(cutoff)s

-- name: prune_log_batch
-- One batch in its own short transaction; SKIP LOCKED lets two replicas prune side by side.
WITH gone AS (
    DELETE FROM log_chunks
    WHERE id IN (
        SELECT id FROM log_chunks WHERE at < %(cutoff)s LIMIT %(batch)s FOR UPDATE SKIP LOCKED
    )
    RETURNING action_id, octet_length(data) AS n
)
SELECT count(*), coalesce(sum(n), 0), coalesce(array_agg(DISTINCT action_id), '{}')
FROM gone

-- name: prune_payload_count
SELECT count(*), coalesce(sum(octet_length(payload::text)), 0)
FROM notifications
WHERE received_at < %(cutoff)s AND payload <> '{}'::jsonb

-- name: prune_payload_batch
-- Same shape as prune_log_batch; the notification row stays (its alerts refer to it).
WITH old AS (
    SELECT id, octet_length(payload::text) AS n
    FROM notifications
    WHERE received_at < %(cutoff)s AND payload <> '{}'::jsonb
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    UPDATE notifications AS nt SET payload = '{}'::jsonb
    FROM old
    WHERE nt.id = old.id
    RETURNING old.n
)
SELECT count(*), coalesce(sum(n), 0) FROM gone

-- name: prune_log_event
-- The audit trail says when and why output disappeared.
INSERT INTO events (action_id, actor, kind, message, data)
VALUES (NULL, %(actor)s, 'log_pruned', %(message)s, %(data)s)
