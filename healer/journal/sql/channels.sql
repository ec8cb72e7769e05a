-- Notifications (healer/journal/channels.py): the channel is one of its constants.

-- name: notify
SELECT pg_notify(%(channel)s, %(action_id)s::text)

-- name: ping
SELECT 1
