-- The web console's reads (healer/journal/console.py, for healer/console/). It never writes:
-- approve and cancel go through the API, which records the state change with its event.

-- name: console_actions
-- Recent actions, newest first, optionally of one state and/or one rule; `before` pages back.
SELECT a.id, a.rule, a.state, a.reason, a.dry_run, a.labels, a.created_at, a.started_at,
       a.finished_at, a.cancel_requested_at,
       extract(epoch FROM coalesce(a.finished_at, now()) - a.started_at) AS duration
FROM actions AS a
WHERE (%(state)s::text IS NULL OR a.state = %(state)s::text)
  AND (%(rule)s::text IS NULL OR a.rule = %(rule)s::text)
  AND (%(before)s::bigint IS NULL OR a.id < %(before)s::bigint)
ORDER BY a.id DESC
LIMIT %(limit)s

-- name: console_rules
-- The rules that have actions, for the filter.
SELECT rule FROM actions GROUP BY rule ORDER BY rule

-- name: console_action
SELECT a.id, a.rule, a.state, a.reason, a.dry_run, a.labels, a.created_at, a.started_at,
       a.finished_at, a.cancel_requested_at,
       extract(epoch FROM coalesce(a.finished_at, now()) - a.started_at) AS duration,
       a.plan, a.plan_hash, a.on_interrupt, a.attempt, a.lease_owner, a.lease_expires_at,
       a.approval_expires_at, a.approved_by, a.approved_at, a.cancelled_by, a.cancelled_at,
       a.fingerprint, a.target, a.paused_at, a.resumed_by,
       al.status AS alert_status, al.annotations, al.starts_at AS alert_starts_at,
       al.generator_url
FROM actions AS a
JOIN alerts AS al ON al.id = a.alert_id
WHERE a.id = %(id)s

-- name: console_steps
SELECT idx, name, kind, state, attempt, started_at, finished_at,
       extract(epoch FROM coalesce(finished_at, now()) - started_at) AS duration,
       exit_code, result, error, output_bytes, undo_started_at, undo_finished_at, undo_error
FROM steps
WHERE action_id = %(id)s
ORDER BY idx

-- name: console_events
SELECT id, at, actor, kind, from_state, to_state, message
FROM events
WHERE action_id = %(id)s
ORDER BY id
