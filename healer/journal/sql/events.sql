-- The audit trail (healer/journal/events.py): one row per state change, written in the same
-- transaction as the change.

-- name: insert_event
INSERT INTO events (action_id, actor, kind, from_state, to_state, message, data)
VALUES (%(action_id)s, %(actor)s, %(kind)s, %(from_state)s, %(to_state)s, %(message)s, %(data)s)
