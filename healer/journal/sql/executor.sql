-- The executor's writes: claim, lease, fencing, step and action transitions, the sweeper.
-- Fencing: every write about a running action names (id, attempt, lease_owner); `attempt` is
-- the token a claim increments, so an executor whose lease was taken over matches no row.

-- name: exec_claim_lock
-- Claims are serialised across replicas (a few ms each) so max_concurrent counts are exact.
SELECT pg_advisory_xact_lock(%(lock)s)

-- name: exec_claim
WITH candidate AS (
    SELECT a.id
    FROM actions a
    WHERE a.state = 'pending'
      AND (SELECT count(*) FROM actions r WHERE r.rule = a.rule AND r.state = 'running')
          < greatest(coalesce((a.plan ->> 'max_concurrent')::integer, 1), 1)
    ORDER BY a.id
    LIMIT 1
    FOR UPDATE OF a SKIP LOCKED
)
UPDATE actions a
SET state = 'running',
    attempt = a.attempt + 1,
    lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    started_at = coalesce(a.started_at, now()),
    finished_at = NULL
FROM candidate
WHERE a.id = candidate.id
RETURNING a.id, a.rule, a.attempt, a.plan, a.plan_hash, a.dry_run,
          a.cancel_requested_at IS NOT NULL AS cancel_requested

-- name: exec_fence
-- Held for the rest of the writing transaction: a takeover (sweeper, new claim) waits for it.
SELECT cancel_requested_at IS NOT NULL AS cancel_requested
FROM actions
WHERE id = %(action_id)s AND attempt = %(attempt)s AND lease_owner = %(owner)s
  AND state = 'running'
FOR SHARE

-- name: exec_renew
UPDATE actions
SET lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE id = %(action_id)s AND attempt = %(attempt)s AND lease_owner = %(owner)s
  AND state = 'running'
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested

-- name: exec_ensure_step
INSERT INTO steps (action_id, idx, name, kind)
VALUES (%(action_id)s, %(idx)s, %(name)s, %(kind)s)
ON CONFLICT (action_id, idx) DO NOTHING

-- name: exec_step_rows
SELECT idx, state, result FROM steps WHERE action_id = %(action_id)s ORDER BY idx

-- name: exec_step_start
UPDATE steps
SET state = 'running', attempt = %(attempt)s, started_at = now(), finished_at = NULL,
    exit_code = NULL, result = '{}'::jsonb, error = '', output_bytes = 0,
    undo_started_at = NULL, undo_finished_at = NULL, undo_error = ''
WHERE action_id = %(action_id)s AND idx = %(idx)s

-- name: exec_step_finish
UPDATE steps
SET state = %(state)s, finished_at = now(), exit_code = %(exit_code)s, result = %(result)s,
    error = %(error)s, output_bytes = %(output_bytes)s
WHERE action_id = %(action_id)s AND idx = %(idx)s AND attempt = %(attempt)s

-- name: exec_step_patch
UPDATE steps SET result = result || %(patch)s
WHERE action_id = %(action_id)s AND idx = ANY(%(idxs)s)

-- name: exec_step_undo_start
UPDATE steps SET undo_started_at = now() WHERE action_id = %(action_id)s AND idx = %(idx)s

-- name: exec_step_undo_finish
UPDATE steps
SET state = %(state)s, undo_started_at = coalesce(undo_started_at, now()),
    undo_finished_at = now(), undo_error = %(undo_error)s, result = result || %(patch)s
WHERE action_id = %(action_id)s AND idx = ANY(%(idxs)s)

-- name: exec_steps_close_pending
UPDATE steps SET state = %(state)s, error = %(error)s
WHERE action_id = %(action_id)s AND state = 'pending'

-- name: exec_finish
UPDATE actions
SET state = %(state)s, reason = %(reason)s, finished_at = now(), lease_expires_at = NULL
WHERE id = %(action_id)s AND attempt = %(attempt)s AND lease_owner = %(owner)s
  AND state = 'running'
RETURNING rule, extract(epoch FROM finished_at - started_at)::float8 AS duration

-- name: exec_expired_leases
SELECT id, attempt, lease_owner
FROM actions
WHERE state = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT 100
FOR UPDATE SKIP LOCKED

-- name: exec_interrupt_steps
-- The running step, and steps whose changes sat in an uncommitted shared transaction.
UPDATE steps
SET state = 'interrupted', finished_at = now(),
    error = CASE WHEN state = 'running' THEN %(why)s
                 ELSE 'its transaction was rolled back: ' || %(why)s END
WHERE action_id = %(action_id)s
  AND (state = 'running' OR (state = 'succeeded' AND result ->> 'transaction' = 'open'))

-- name: exec_interrupt_undo
UPDATE steps
SET state = 'undo_failed', undo_finished_at = now(), undo_error = 'interrupted: ' || %(why)s
WHERE action_id = %(action_id)s AND undo_started_at IS NOT NULL AND undo_finished_at IS NULL

-- name: exec_interrupt_action
UPDATE actions
SET state = 'interrupted', reason = %(why)s, lease_expires_at = NULL
WHERE id = %(action_id)s AND attempt = %(attempt)s AND state = 'running'
RETURNING rule, attempt, cancel_requested_at IS NOT NULL AS cancel_requested,
          coalesce(plan ->> 'on_interrupt', on_interrupt) AS on_interrupt,
          EXISTS (SELECT 1 FROM steps s
                  WHERE s.action_id = actions.id
                    AND (s.state IN ('failed', 'cancelled', 'undone', 'undo_failed')
                         OR s.undo_started_at IS NOT NULL)) AS unwinding

-- name: exec_requeue
UPDATE actions SET state = 'pending', reason = %(reason)s, lease_owner = NULL
WHERE id = %(action_id)s AND state = 'interrupted'

-- name: exec_give_up
UPDATE actions SET state = %(state)s, reason = %(reason)s, finished_at = now()
WHERE id = %(action_id)s AND state = 'interrupted'
RETURNING extract(epoch FROM finished_at - started_at)::float8 AS duration

-- name: exec_expire_approvals
UPDATE actions
SET state = 'cancelled', reason = 'approval timed out', finished_at = now()
WHERE id IN (
    SELECT id FROM actions
    WHERE state = 'awaiting_approval'
      AND coalesce(approval_expires_at, created_at + make_interval(secs => %(timeout)s)) < now()
    ORDER BY id
    LIMIT 100
    FOR UPDATE SKIP LOCKED
)
RETURNING id, rule

-- name: exec_cancel_requested
SELECT id FROM actions
WHERE id = ANY(%(ids)s) AND state = 'running' AND cancel_requested_at IS NOT NULL
