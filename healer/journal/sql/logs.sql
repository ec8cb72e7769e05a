-- The live output of actions (healer/journal/logs.py): appended by the executor's step output
-- capture, read by the log API, the log hub and the CLI.
-- A chunk's id orders it within its action: the executor is the only writer of an action's
-- chunks and commits them one after another, so ids grow in commit order.

-- name: log_action_state
-- The action's state, and whether it is final (no more output will come). `interrupted` is
-- final only once the action was given up (finished_at set), not on its way back to pending.
SELECT state,
       (state IN ('succeeded', 'failed', 'cancelled', 'skipped')
        OR (state = 'interrupted' AND finished_at IS NOT NULL)) AS final
FROM actions
WHERE id = %(action_id)s

-- name: log_follow_page
-- The next chunks after `after` AND the action's state, read in ONE statement (one snapshot):
-- when the state is final and the page is not full, these are the last chunks there will be.
-- No row: the action does not exist. Chunk columns are NULL when there is no new chunk.
SELECT a.state,
       (a.state IN ('succeeded', 'failed', 'cancelled', 'skipped')
        OR (a.state = 'interrupted' AND a.finished_at IS NOT NULL)) AS final,
       c.id, c.step_idx, c.stream, c.at, c.data, c.host
FROM actions AS a
LEFT JOIN LATERAL (
    SELECT id, step_idx, stream, at, data, host
    FROM log_chunks
    WHERE action_id = a.id AND id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
) AS c ON true
WHERE a.id = %(action_id)s
ORDER BY c.id

-- name: log_last_chunk_id
SELECT coalesce(max(id), 0) FROM log_chunks WHERE action_id = %(action_id)s

-- name: log_text_page
-- One page of the whole log, optionally of one stream, one step and/or one host.
SELECT id, step_idx, stream, at, data, host
FROM log_chunks
WHERE action_id = %(action_id)s
  AND id > %(after)s
  AND (%(stream)s::text IS NULL OR stream = %(stream)s::text)
  AND (%(step)s::integer IS NULL OR step_idx = %(step)s::integer)
  AND (%(host)s::text IS NULL OR host = %(host)s::text)
ORDER BY id
LIMIT %(limit)s

-- name: log_chunk_lock
-- Taken before an action's chunks are written, until commit: the healer and the agents of a
-- multi-host step write the same action's chunks, and one writer at a time keeps ids growing
-- in commit order (readers follow "every chunk after id N").
SELECT pg_advisory_xact_lock(%(key)s)

-- name: log_write_chunk
INSERT INTO log_chunks (action_id, step_idx, host, stream, at, data)
VALUES (%(action_id)s, %(step_idx)s, %(host)s, %(stream)s, %(at)s, %(data)s)

-- name: log_write_output_bytes
UPDATE steps SET output_bytes = %(output_bytes)s
WHERE action_id = %(action_id)s AND idx = %(step_idx)s
