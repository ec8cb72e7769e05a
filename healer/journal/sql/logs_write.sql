-- Appending step output to the journal. The caller holds the action's fence (exec_fence) in
-- the same transaction, and one action's chunks are written by one writer, one transaction
-- after another, so chunk ids grow in commit order (readers page by id).

-- name: log_write_chunk
INSERT INTO log_chunks (action_id, step_idx, stream, at, data)
VALUES (%(action_id)s, %(step_idx)s, %(stream)s, %(at)s, %(data)s)

-- name: log_write_output_bytes
UPDATE steps SET output_bytes = %(output_bytes)s
WHERE action_id = %(action_id)s AND idx = %(step_idx)s
