-- Steps on other hosts: one row per host a step (or its undo) runs on, written before the
-- host's message is sent. `token` fences the agent's writes: an agent writes about a host run
-- only with its id and token and only while it is `running`, so a redelivered message, a
-- timed-out run or a cancelled one can never be started or finished twice.
CREATE TABLE host_runs (
    id               bigserial PRIMARY KEY,
    action_id        bigint NOT NULL REFERENCES actions (id),
    step_idx         integer NOT NULL,
    purpose          text NOT NULL DEFAULT 'step' CHECK (purpose IN ('step', 'undo')),
    attempt          integer NOT NULL,
    host             text NOT NULL,
    queue            text NOT NULL,
    batch            integer NOT NULL DEFAULT 0,
    token            text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN (
                         'pending', 'sent', 'running', 'succeeded', 'failed', 'timed_out',
                         'interrupted', 'cancelled', 'skipped')),
    agent            text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- a sent run nobody started by then is `timed_out`; so is a running one past it
    deadline         timestamptz,
    -- a running run whose agent stopped renewing this is `interrupted`
    lease_expires_at timestamptz,
    exit_code        integer,
    error            text NOT NULL DEFAULT '',
    result           jsonb NOT NULL DEFAULT '{}'::jsonb,
    output_bytes     bigint NOT NULL DEFAULT 0,
    -- the last chunk message applied (agents without journal access report by message)
    seq              integer NOT NULL DEFAULT 0,
    CONSTRAINT host_runs_once UNIQUE (action_id, step_idx, purpose, attempt, host)
);
CREATE INDEX host_runs_open ON host_runs (action_id) WHERE state IN ('pending', 'sent', 'running');
CREATE INDEX host_runs_created_at ON host_runs (created_at);

-- Output of a host run carries its host; a local step's output has ''.
ALTER TABLE log_chunks ADD COLUMN host text NOT NULL DEFAULT '';

-- A multi-host step may pause after a named host until somebody with `approve` resumes it.
ALTER TABLE actions ADD COLUMN paused_at timestamptz;
ALTER TABLE actions ADD COLUMN resume_requested_at timestamptz;
ALTER TABLE actions ADD COLUMN resumed_by text;
