-- The journal: every notification, alert, action, step, state change and log chunk.
-- Notification channels (payload: the action id as text), sent in the writing transaction:
--   taskmedic_actions  an action became pending (executors wake up and claim)
--   taskmedic_state    an action changed state (followers of its log learn it ended)
--   taskmedic_log      a log chunk of the action was appended
-- Actions are unique per (rule, fingerprint, starts_at, trigger): an Alertmanager retry or the
-- copy sent by the other replica of an HA pair can never start a second action.

CREATE TABLE notifications (
    id               bigserial PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    receiver         text NOT NULL,
    status           text NOT NULL CHECK (status IN ('firing', 'resolved')),
    group_key        text NOT NULL DEFAULT '',
    truncated_alerts integer NOT NULL DEFAULT 0,
    payload          jsonb NOT NULL
);

CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications (id),
    received_at     timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL CHECK (status IN ('firing', 'resolved')),
    fingerprint     text NOT NULL,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz,
    labels          jsonb NOT NULL,
    annotations     jsonb NOT NULL DEFAULT '{}'::jsonb,
    generator_url   text NOT NULL DEFAULT ''
);
CREATE INDEX alerts_received_at ON alerts (received_at);
CREATE INDEX alerts_fingerprint ON alerts (fingerprint, starts_at);

CREATE TABLE actions (
    id                  bigserial PRIMARY KEY,
    rule                text NOT NULL,
    fingerprint         text NOT NULL,
    starts_at           timestamptz NOT NULL,
    trigger             text NOT NULL DEFAULT 'firing' CHECK (trigger IN ('firing', 'resolved')),
    alert_id            bigint NOT NULL REFERENCES alerts (id),
    labels              jsonb NOT NULL,
    -- target: the label set the cooldown, concurrency and circuit breaker are counted per
    target              text NOT NULL DEFAULT '',
    state               text NOT NULL CHECK (state IN (
                            'pending', 'awaiting_approval', 'running', 'succeeded', 'failed',
                            'cancelled', 'interrupted', 'skipped')),
    reason              text NOT NULL DEFAULT '',
    dry_run             boolean NOT NULL DEFAULT false,
    -- plan: the rendered steps (argv, SQL and parameters, task signature); approval binds its hash
    plan                jsonb NOT NULL,
    plan_hash           text NOT NULL,
    on_interrupt        text NOT NULL DEFAULT 'fail' CHECK (on_interrupt IN ('retry', 'fail')),
    -- fencing: every claim increments attempt; an outcome is written only with the current one
    attempt             integer NOT NULL DEFAULT 0,
    lease_owner         text,
    lease_expires_at    timestamptz,
    approval_expires_at timestamptz,
    approved_by         text,
    approved_at         timestamptz,
    -- set by POST /api/actions/{id}/cancel on a running action; the executor stops it
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    CONSTRAINT actions_once UNIQUE (rule, fingerprint, starts_at, trigger)
);
CREATE INDEX actions_claimable ON actions (id) WHERE state = 'pending';
CREATE INDEX actions_running ON actions (lease_expires_at) WHERE state = 'running';
CREATE INDEX actions_rule_target ON actions (rule, target, created_at);
CREATE INDEX actions_created_at ON actions (created_at);

CREATE TABLE steps (
    action_id     bigint NOT NULL REFERENCES actions (id),
    idx           integer NOT NULL,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('script', 'sql', 'celery', 'repair')),
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN (
                      'pending', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted',
                      'skipped', 'undone', 'undo_failed')),
    attempt       integer NOT NULL DEFAULT 0,
    started_at    timestamptz,
    finished_at   timestamptz,
    exit_code     integer,
    result        jsonb NOT NULL DEFAULT '{}'::jsonb,
    error         text NOT NULL DEFAULT '',
    output_bytes  bigint NOT NULL DEFAULT 0,
    undo_started_at  timestamptz,
    undo_finished_at timestamptz,
    undo_error    text NOT NULL DEFAULT '',
    PRIMARY KEY (action_id, idx)
);

-- The audit trail: one row per state change, written in the same transaction as the change.
CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    action_id  bigint REFERENCES actions (id),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    kind       text NOT NULL,
    from_state text,
    to_state   text,
    message    text NOT NULL DEFAULT '',
    data       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_action ON events (action_id, id);

-- Live output of steps. A chunk's id orders it within its action (one writer per action).
CREATE TABLE log_chunks (
    id        bigserial PRIMARY KEY,
    action_id bigint NOT NULL REFERENCES actions (id),
    step_idx  integer NOT NULL,
    stream    text NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    at        timestamptz NOT NULL DEFAULT now(),
    data      bytea NOT NULL
);
CREATE INDEX log_chunks_action ON log_chunks (action_id, id);
CREATE INDEX log_chunks_at ON log_chunks (at);
