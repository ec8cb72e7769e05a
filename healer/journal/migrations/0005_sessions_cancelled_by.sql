-- Console sessions live in the journal so that logging out ends one on every healer, and
-- `cancelled_by` names who cancelled an action as `approved_by` names who approved it.
CREATE TABLE console_sessions (
    -- sha256 of the cookie: the journal never holds a value a browser could present
    token_hash  text PRIMARY KEY,
    user_name   text NOT NULL,
    -- HMAC, keyed by the cookie, of the user's credential and roles at login: changing them
    -- ends the session
    credential  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);

ALTER TABLE actions ADD COLUMN cancelled_by text;
ALTER TABLE actions ADD COLUMN cancelled_at timestamptz;
