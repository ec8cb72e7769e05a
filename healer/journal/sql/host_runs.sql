-- Host runs (healer/journal/host_runs.py): a step's runs on other hosts through agents.
-- The healer that holds the action writes and sends them (under the action's fence); an agent
-- (or the healer applying an agent's messages) writes about one only with its id and token
-- and only while the run is `running`.

-- name: hr_done_hosts
-- Hosts whose run of this step succeeded in an earlier attempt: a retry does not run them again.
SELECT DISTINCT host FROM host_runs
WHERE action_id = %(action_id)s AND step_idx = %(step_idx)s AND purpose = %(purpose)s
  AND state = 'succeeded'

-- name: hr_create
INSERT INTO host_runs (action_id, step_idx, purpose, attempt, host, queue, batch, token)
VALUES (%(action_id)s, %(step_idx)s, %(purpose)s, %(attempt)s, %(host)s, %(queue)s, %(batch)s,
        %(token)s)
ON CONFLICT (action_id, step_idx, purpose, attempt, host) DO UPDATE SET token = host_runs.token
RETURNING id, host, queue, batch, token, state

-- name: hr_mark_sent
UPDATE host_runs
SET state = 'sent', sent_at = now(), deadline = now() + make_interval(secs => %(within)s)
WHERE id = ANY(%(ids)s) AND state = 'pending'
RETURNING id, extract(epoch FROM deadline - now())::float8 AS expires_in

-- name: hr_rows
SELECT id, host, queue, batch, token, state, agent, exit_code, error, result, output_bytes,
       sent_at, started_at, finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds
FROM host_runs
WHERE action_id = %(action_id)s AND step_idx = %(step_idx)s AND purpose = %(purpose)s
  AND attempt = %(attempt)s
ORDER BY id

-- name: hr_expire_unstarted
UPDATE host_runs
SET state = 'timed_out', finished_at = now(), lease_expires_at = NULL,
    error = 'no agent started it from queue ' || queue || ' within '
            || round(extract(epoch FROM deadline - sent_at)::numeric, 1) || 's'
WHERE action_id = %(action_id)s AND step_idx = %(step_idx)s AND state = 'sent'
  AND deadline < now()

-- name: hr_expire_running
UPDATE host_runs
SET state = CASE WHEN deadline < now() THEN 'timed_out' ELSE 'interrupted' END,
    finished_at = now(), lease_expires_at = NULL,
    error = CASE WHEN deadline < now()
                 THEN 'the agent ' || agent || ' reported no end within '
                      || round(extract(epoch FROM deadline - sent_at)::numeric, 1) || 's'
                 ELSE 'the agent ' || agent || ' stopped renewing its lease (killed?)' END
WHERE action_id = %(action_id)s AND step_idx = %(step_idx)s AND state = 'running'
  AND (deadline < now() OR lease_expires_at < now())

-- name: hr_close_open
-- The step is over (cancel, shutdown, a failed batch): runs not finished get `state`.
UPDATE host_runs
SET state = %(state)s, error = %(error)s, lease_expires_at = NULL,
    finished_at = CASE WHEN state = 'pending' THEN finished_at ELSE now() END
WHERE action_id = %(action_id)s AND step_idx = %(step_idx)s AND purpose = %(purpose)s
  AND attempt = %(attempt)s AND state IN ('pending', 'sent', 'running')
  AND (%(only_pending)s::boolean IS FALSE OR state = 'pending')
RETURNING id, token, host

-- name: hr_close_one
-- A run whose message could not be sent.
UPDATE host_runs SET state = %(state)s, error = %(error)s, finished_at = now()
WHERE id = %(run_id)s AND state IN ('pending', 'sent')

-- name: hr_interrupt_action
-- The action was interrupted (its healer stopped): every open run of it stops too.
UPDATE host_runs
SET state = 'interrupted', error = %(why)s, lease_expires_at = NULL, finished_at = now()
WHERE action_id = %(action_id)s AND state IN ('pending', 'sent', 'running')

-- name: hr_start
-- An agent takes a sent run; nothing when it was started, finished or expired already. It gets
-- the script as the action's stored plan has it, to hold its message to.
UPDATE host_runs AS h
SET state = 'running', agent = %(agent)s, started_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM actions AS a
WHERE h.id = %(run_id)s AND h.token = %(token)s AND h.state = 'sent' AND h.deadline > now()
  AND a.id = h.action_id
RETURNING h.action_id, h.step_idx,
          CASE WHEN h.purpose = 'undo' THEN a.plan -> 'steps' -> h.step_idx -> 'undo' -> 'script'
               ELSE a.plan -> 'steps' -> h.step_idx -> 'script' END AS script

-- name: hr_renew
UPDATE host_runs
SET lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE id = %(run_id)s AND token = %(token)s AND state = 'running'
RETURNING id

-- name: hr_fence
-- Held for the rest of an agent's writing transaction, then the per-action chunk lock: an
-- action's chunks commit one after another, so their ids grow in commit order.
SELECT action_id, step_idx, host, seq FROM host_runs
WHERE id = %(run_id)s AND token = %(token)s AND state = 'running'
FOR UPDATE

-- name: hr_progress
UPDATE host_runs
SET output_bytes = coalesce(%(output_bytes)s, output_bytes), seq = %(seq)s
WHERE id = %(run_id)s

-- name: hr_finish
UPDATE host_runs
SET state = %(state)s, finished_at = now(), lease_expires_at = NULL, exit_code = %(exit_code)s,
    error = %(error)s, result = %(result)s, output_bytes = %(output_bytes)s, seq = %(seq)s
WHERE id = %(run_id)s AND token = %(token)s AND state = 'running'
RETURNING action_id

-- name: hr_state
SELECT state, seq FROM host_runs WHERE id = %(run_id)s AND token = %(token)s

-- name: hr_pause
UPDATE actions SET paused_at = now(), resume_requested_at = NULL, resumed_by = NULL
WHERE id = %(action_id)s

-- name: hr_paused
SELECT resume_requested_at IS NOT NULL AS resumed, resumed_by,
       extract(epoch FROM now() - paused_at)::float8 AS waited
FROM actions WHERE id = %(action_id)s

-- name: hr_unpause
UPDATE actions SET paused_at = NULL WHERE id = %(action_id)s

-- name: hr_resume
-- POST /api/actions/{id}/resume: only a running action paused between batches.
UPDATE actions SET resume_requested_at = now(), resumed_by = %(by)s
WHERE id = %(action_id)s AND state = 'running' AND paused_at IS NOT NULL
  AND resume_requested_at IS NULL
RETURNING id

-- name: hr_of_action
SELECT id, step_idx, purpose, attempt, host, queue, batch, state, agent, exit_code, error,
       output_bytes, sent_at, started_at, finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds
FROM host_runs WHERE action_id = %(action_id)s
ORDER BY step_idx, purpose, attempt, id

-- name: hr_counts
-- Per action: host runs by outcome (the action list shows them).
SELECT action_id,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state IN ('failed', 'timed_out', 'interrupted')) AS failed,
       count(*) AS total
FROM host_runs WHERE action_id = ANY(%(ids)s) AND purpose = 'step'
GROUP BY action_id
