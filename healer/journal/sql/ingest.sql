-- Recording a webhook notification (healer/ingest.py). Every query here runs inside ONE
-- transaction per notification: the notification, its alerts and every action it starts
-- commit together or not at all.

-- name: insert_notification
INSERT INTO notifications (receiver, status, group_key, truncated_alerts, payload)
VALUES (%(receiver)s, %(status)s, %(group_key)s, %(truncated_alerts)s, %(payload)s)
RETURNING id

-- name: insert_alert
INSERT INTO alerts (notification_id, status, fingerprint, starts_at, ends_at, labels,
                    annotations, generator_url)
VALUES (%(notification_id)s, %(status)s, %(fingerprint)s, %(starts_at)s, %(ends_at)s,
        %(labels)s, %(annotations)s, %(generator_url)s)
RETURNING id

-- name: lock_rule_target
-- Serialises decisions for one rule and target across requests and healer processes, so the
-- cooldown and the circuit breaker see every action committed before them. Released at COMMIT.
SELECT pg_advisory_xact_lock(hashtext(%(rule)s || chr(31) || %(target)s))

-- name: recent_actions
-- Actions of this rule and target inside the cooldown and limit windows, not counting the
-- action this alert would create (a repeat of it conflicts on actions_once anyway). Skipped
-- and cancelled actions did not run and do not count.
SELECT count(*) FILTER (WHERE created_at > now() - make_interval(secs => %(cooldown)s))
           AS in_cooldown,
       count(*) FILTER (WHERE created_at > now() - make_interval(secs => %(per)s))
           AS in_limit
FROM actions
WHERE rule = %(rule)s
  AND target = %(target)s
  AND state NOT IN ('skipped', 'cancelled')
  AND created_at > now() - make_interval(secs => greatest(%(cooldown)s, %(per)s))
  AND NOT (fingerprint = %(fingerprint)s AND starts_at = %(starts_at)s
           AND trigger = %(trigger)s)

-- name: insert_action
-- A repeat of the same firing (Alertmanager retry, the other HA replica) inserts nothing.
INSERT INTO actions (rule, fingerprint, starts_at, trigger, alert_id, labels, target, state,
                     reason, dry_run, plan, plan_hash, on_interrupt, approval_expires_at,
                     finished_at)
VALUES (%(rule)s, %(fingerprint)s, %(starts_at)s, %(trigger)s, %(alert_id)s, %(labels)s,
        %(target)s, %(state)s, %(reason)s, %(dry_run)s, %(plan)s, %(plan_hash)s,
        %(on_interrupt)s,
        CASE WHEN %(state)s = 'awaiting_approval'
             THEN now() + make_interval(secs => %(approval_timeout)s) END,
        CASE WHEN %(state)s IN ('skipped', 'failed') THEN now() END)
ON CONFLICT ON CONSTRAINT actions_once DO NOTHING
RETURNING id

-- name: insert_step
INSERT INTO steps (action_id, idx, name, kind, state)
VALUES (%(action_id)s, %(idx)s, %(name)s, %(kind)s, %(state)s)

-- name: insert_event
INSERT INTO events (action_id, actor, kind, from_state, to_state, message, data)
VALUES (%(action_id)s, %(actor)s, %(kind)s, %(from_state)s, %(to_state)s, %(message)s, %(data)s)

-- name: notify_pending
SELECT pg_notify('taskmedic_actions', %(action_id)s::text)

-- name: notify_state
SELECT pg_notify('taskmedic_state', %(action_id)s::text)

-- name: cancel_unstarted_for_alert
-- A resolved alert cancels its actions that have not started (same fingerprint and startsAt).
-- FOR UPDATE re-reads a row an executor claimed meanwhile, which then no longer qualifies.
WITH old AS (
    SELECT id, state
    FROM actions
    WHERE fingerprint = %(fingerprint)s
      AND starts_at = %(starts_at)s
      AND trigger = 'firing'
      AND state IN ('pending', 'awaiting_approval')
    FOR UPDATE
)
UPDATE actions AS a
SET state = 'cancelled', reason = %(reason)s, finished_at = now()
FROM old
WHERE a.id = old.id
RETURNING a.id, a.rule, old.state AS from_state

-- name: cancel_pending_steps
UPDATE steps SET state = 'cancelled' WHERE action_id = %(action_id)s AND state = 'pending'
