-- Reading and steering actions (healer/journal/actions.py, for the HTTP API and the CLI).

-- name: list_actions
-- Newest first, keyset-paginated on id (`before` is the cursor; NULL for the first page).
SELECT a.id, a.rule, a.state, a.reason, a.dry_run, a.target, a.fingerprint, a.starts_at,
       a.trigger, a.labels, a.plan_hash, a.created_at, a.started_at, a.finished_at,
       a.approval_expires_at, a.cancel_requested_at, al.annotations, al.status AS alert_status
FROM actions AS a
JOIN alerts AS al ON al.id = a.alert_id
WHERE (%(before)s::bigint IS NULL OR a.id < %(before)s::bigint)
  AND (%(states)s::text[] IS NULL OR a.state = ANY(%(states)s::text[]))
  AND (%(rule)s::text IS NULL OR a.rule = %(rule)s::text)
  AND (%(since)s::timestamptz IS NULL OR a.created_at >= %(since)s::timestamptz)
ORDER BY a.id DESC
LIMIT %(limit)s

-- name: get_action
SELECT a.id, a.rule, a.state, a.reason, a.dry_run, a.target, a.fingerprint, a.starts_at,
       a.trigger, a.labels, a.plan_hash, a.created_at, a.started_at, a.finished_at,
       a.approval_expires_at, a.cancel_requested_at, al.annotations, al.status AS alert_status,
       a.plan, a.attempt, a.lease_owner, a.lease_expires_at, a.approved_by, a.approved_at,
       a.cancelled_by, a.cancelled_at, a.on_interrupt, al.ends_at, al.generator_url, al.notification_id, a.alert_id,
       a.paused_at, a.resumed_by
FROM actions AS a
JOIN alerts AS al ON al.id = a.alert_id
WHERE a.id = %(id)s

-- name: get_steps
SELECT idx, name, kind, state, attempt, started_at, finished_at, exit_code, result, error,
       output_bytes, undo_started_at, undo_finished_at, undo_error
FROM steps
WHERE action_id = %(id)s
ORDER BY idx

-- name: get_events
SELECT id, at, actor, kind, from_state, to_state, message, data
FROM events
WHERE action_id = %(id)s
ORDER BY id

-- name: lock_action
SELECT state, plan_hash, approval_expires_at, approval_expires_at < now() AS expired,
       cancel_requested_at
FROM actions
WHERE id = %(id)s
FOR UPDATE

-- name: approve_action
UPDATE actions
SET state = 'pending', approved_by = %(actor)s, approved_at = now()
WHERE id = %(id)s AND state = 'awaiting_approval'

-- name: cancel_action
UPDATE actions
SET state = 'cancelled', reason = %(reason)s, finished_at = now(),
    cancelled_by = %(actor)s, cancelled_at = now()
WHERE id = %(id)s AND state IN ('pending', 'awaiting_approval')

-- name: cancel_pending_steps
UPDATE steps SET state = 'cancelled' WHERE action_id = %(action_id)s AND state = 'pending'

-- name: request_cancel
UPDATE actions
SET cancel_requested_at = now(), cancelled_by = %(actor)s, cancelled_at = now()
WHERE id = %(id)s AND state = 'running' AND cancel_requested_at IS NULL
