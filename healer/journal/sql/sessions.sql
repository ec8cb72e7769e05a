-- Console sessions (healer/journal/sessions.py, for healer/auth.py).

-- name: create_session
INSERT INTO console_sessions (token_hash, user_name, credential, expires_at)
VALUES (%(token_hash)s, %(user_name)s, %(credential)s, now() + make_interval(secs => %(ttl)s))

-- name: prune_sessions
DELETE FROM console_sessions WHERE expires_at < now()

-- name: find_session
SELECT user_name, credential
FROM console_sessions
WHERE token_hash = %(token_hash)s AND expires_at > now()

-- name: delete_session
DELETE FROM console_sessions WHERE token_hash = %(token_hash)s
