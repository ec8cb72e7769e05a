-- Recording a webhook notification (healer/ingest.py). Everything one notification records
-- (the notification, its alerts and every action it starts) is ONE statement, so it commits
-- together or not at all: taskmedic_ingest, a function of migration 0002, does the work.
-- insert_event, notify_* and cancel_pending_steps serve healer/actions.py.

-- name: ingest_notification
-- First the rule+target advisory locks (`locks`: [[rule, target], ...]), in the order given:
-- the caller sorts them, so two notifications touching the same targets can never wait on
-- each other in a cycle. They serialise cooldown and circuit-breaker decisions for one rule
-- and target across requests and healer processes, and are released at COMMIT. The
-- aggregate takes every lock before its one row reaches taskmedic_ingest, whose statements
-- (it is VOLATILE) then see every action committed before the locks were granted.
SELECT taskmedic_ingest(
    p_receiver => %(receiver)s,
    p_status => %(status)s,
    p_group_key => %(group_key)s,
    p_truncated_alerts => %(truncated_alerts)s,
    p_payload => %(payload)s,
    p_alerts => %(alerts)s,
    p_work => %(work)s,
    p_plans => %(plans)s,
    p_approval_timeout => %(approval_timeout)s,
    p_actor => %(actor)s)
FROM (
    SELECT count(pg_advisory_xact_lock(hashtext((k.key ->> 0) || chr(31) || (k.key ->> 1))))
    FROM jsonb_array_elements(%(locks)s) AS k (key)
) AS locked

-- name: insert_event
INSERT INTO events (action_id, actor, kind, from_state, to_state, message, data)
VALUES (%(action_id)s, %(actor)s, %(kind)s, %(from_state)s, %(to_state)s, %(message)s, %(data)s)

-- name: notify_pending
SELECT pg_notify('taskmedic_actions', %(action_id)s::text)

-- name: notify_state
SELECT pg_notify('taskmedic_state', %(action_id)s::text)

-- name: cancel_pending_steps
UPDATE steps SET state = 'cancelled' WHERE action_id = %(action_id)s AND state = 'pending'
