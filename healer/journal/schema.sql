-- The journal's schema as the migrations leave it: every table, index, constraint and function
-- of migrations/ applied in order, in one file to read. It is not applied by the healer
-- (`migrate.upgrade` applies the migrations); tests/healer/test_schema.py applies it to one
-- database and the migrations to another and compares the two. A new migration changes this
-- file in the same commit. `taskmedic_migrations`, the migrations' own bookkeeping, is left out.
--
-- Notification channels (payload: the action id as text), sent in the writing transaction;
-- their names are the constants of healer/journal/channels.py:
--   taskmedic_actions  an action became pending (executors wake up and claim)
--   taskmedic_state    an action changed state (followers of its log learn it ended)
--   taskmedic_cancel   a running action should stop (executors)
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
CREATE INDEX notifications_payload_kept ON notifications (received_at)
    WHERE payload <> '{}'::jsonb;

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
    -- who cancelled it (or asked the executor to stop it), and when
    cancelled_by        text,
    cancelled_at        timestamptz,
    -- a multi-host step may pause after a named host until somebody with `approve` resumes it
    paused_at           timestamptz,
    resume_requested_at timestamptz,
    resumed_by          text,
    CONSTRAINT actions_once UNIQUE (rule, fingerprint, starts_at, trigger)
);
CREATE INDEX actions_claimable ON actions (id) WHERE state = 'pending';
CREATE INDEX actions_running ON actions (lease_expires_at) WHERE state = 'running';
CREATE INDEX actions_rule_target ON actions (rule, target, created_at);
CREATE INDEX actions_created_at ON actions (created_at);
-- A resolved alert looks up the actions of its firing that have not started.
CREATE INDEX actions_unstarted ON actions (fingerprint, starts_at)
    WHERE state IN ('pending', 'awaiting_approval');

CREATE TABLE steps (
    action_id     bigint NOT NULL REFERENCES actions (id),
    idx           integer NOT NULL,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('script', 'sql', 'celery', 'repair', 'http', 'verify')),
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

-- Console sessions: logging out deletes the row, so it ends on every healer at once.
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
    data      bytea NOT NULL,
    -- the host of a host run's output; '' for a step run by the healer itself
    host      text NOT NULL DEFAULT ''
);
CREATE INDEX log_chunks_action ON log_chunks (action_id, id);
CREATE INDEX log_chunks_at ON log_chunks (at);

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

-- The new action's state and reason: the one place this is decided. taskmedic_ingest below
-- calls it for every action it records, and `taskmedic rules replay` calls it alone
-- (healer/journal/replay.py). The reasons come from the caller (healer.ingest.decision_inputs):
-- `circuit_reason` has the placeholder {in_limit} for the count.
CREATE FUNCTION taskmedic_decide(
    render_error text,
    cooldown double precision,
    in_cooldown bigint,
    limit_count integer,
    in_limit bigint,
    approval boolean,
    cooldown_reason text,
    circuit_reason text,
    OUT state text,
    OUT reason text
) LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF render_error IS NOT NULL THEN
        state := 'failed';
        reason := render_error;
    ELSIF cooldown > 0 AND in_cooldown > 0 THEN
        state := 'skipped';
        reason := cooldown_reason;
    ELSIF limit_count IS NOT NULL AND in_limit >= limit_count THEN
        state := 'skipped';
        reason := replace(circuit_reason, '{in_limit}', in_limit::text);
    ELSIF approval THEN
        state := 'awaiting_approval';
        reason := 'waiting for approval';
    ELSE
        state := 'pending';
        reason := '';
    END IF;
END
$$;

-- Records a notification, its alerts, the cancellations its resolved alerts make and the
-- action each matching rule starts (with its steps, its `created` event, and the NOTIFYs
-- that wake executors and followers). Arguments:
--   p_alerts  JSON array of {status, fingerprint, starts_at, ends_at, labels, annotations,
--             generator_url}, in the notification's order
--   p_work    JSON array, one item per (alert, matching rule), in the order to decide them:
--             {alert (index into p_alerts), rule, target, render_error, cooldown, per,
--             limit_count, approval, cooldown_reason, circuit_reason, plan_hash, dry_run,
--             on_interrupt, rule_source}
--   p_plans   JSON array, the rendered plan of each p_work item
-- Returns {"notification_id": id, "cancelled": [action ids], "actions": [[id, state,
-- reason], ...]} with one entry per p_work item; id is null when the same firing was
-- recorded before (actions_once): nothing new is inserted for it, by design.
CREATE FUNCTION taskmedic_ingest(
    p_receiver text,
    p_status text,
    p_group_key text,
    p_truncated_alerts integer,
    p_payload jsonb,
    p_alerts jsonb,
    p_work jsonb,
    p_plans jsonb,
    p_approval_timeout double precision,
    p_actor text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_notification_id bigint;
    v_alert_ids bigint[] := '{}';
    v_alert jsonb;
    v_work jsonb;
    v_plan jsonb;
    v_id bigint;
    v_ids bigint[];
    v_in_cooldown bigint;
    v_in_limit bigint;
    v_state text;
    v_reason text;
    v_cancelled bigint[] := '{}';
    v_actions jsonb := '[]';
    v_resolved text := 'the alert resolved before the action started';
BEGIN
    INSERT INTO notifications (receiver, status, group_key, truncated_alerts, payload)
    VALUES (p_receiver, p_status, p_group_key, p_truncated_alerts, p_payload)
    RETURNING id INTO v_notification_id;

    FOR v_alert IN
        SELECT x.a FROM jsonb_array_elements(p_alerts) WITH ORDINALITY AS x (a, ord)
        ORDER BY x.ord
    LOOP
        INSERT INTO alerts (notification_id, status, fingerprint, starts_at, ends_at, labels,
                            annotations, generator_url)
        VALUES (v_notification_id, v_alert ->> 'status', v_alert ->> 'fingerprint',
                (v_alert ->> 'starts_at')::timestamptz, (v_alert ->> 'ends_at')::timestamptz,
                v_alert -> 'labels', v_alert -> 'annotations', v_alert ->> 'generator_url')
        RETURNING id INTO v_id;
        v_alert_ids := v_alert_ids || v_id;

        -- A resolved alert cancels its actions that have not started (same fingerprint and
        -- startsAt), through actions_unstarted. FOR UPDATE re-reads a row an executor
        -- claimed meanwhile, which then no longer qualifies. EXECUTE: see recent counts below.
        IF v_alert ->> 'status' = 'resolved' THEN
            EXECUTE $q$
                WITH old AS (
                    SELECT id, state
                    FROM actions
                    WHERE fingerprint = $1
                      AND starts_at = $2
                      AND trigger = 'firing'
                      AND state IN ('pending', 'awaiting_approval')
                    FOR UPDATE
                ), c AS (
                    UPDATE actions AS a
                    SET state = 'cancelled', reason = $3, finished_at = now()
                    FROM old
                    WHERE a.id = old.id
                    RETURNING a.id, old.state AS from_state
                ), s AS (
                    UPDATE steps SET state = 'cancelled'
                    WHERE action_id IN (SELECT c.id FROM c) AND state = 'pending'
                ), e AS (
                    INSERT INTO events (action_id, actor, kind, from_state, to_state, message)
                    SELECT c.id, $4, 'cancelled', c.from_state, 'cancelled', $3
                    FROM c
                )
                SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM c
            $q$
            INTO v_ids
            USING v_alert ->> 'fingerprint', (v_alert ->> 'starts_at')::timestamptz,
                  v_resolved, p_actor;
            PERFORM pg_notify('taskmedic_state', x::text) FROM unnest(v_ids) AS x;
            v_cancelled := v_cancelled || v_ids;
        END IF;
    END LOOP;

    FOR i IN 0 .. jsonb_array_length(p_work) - 1 LOOP
        v_work := p_work -> i;
        v_plan := p_plans -> i;
        v_alert := p_alerts -> (v_work ->> 'alert')::integer;

        -- Actions of this rule and target inside the cooldown and limit windows, not counting
        -- the action this alert would create (a repeat of it conflicts on actions_once
        -- anyway). Skipped and cancelled actions did not run and do not count. Without a
        -- cooldown or limit the counts decide nothing and are not read. EXECUTE plans the
        -- query for these values each time: a plan cached while the table was nearly empty
        -- may pick an index on `rule` alone and then read every action of the rule.
        v_in_cooldown := 0;
        v_in_limit := 0;
        IF (v_work ->> 'cooldown')::double precision > 0
           OR (v_work ->> 'limit_count') IS NOT NULL THEN
            EXECUTE $q$
                SELECT count(*) FILTER (WHERE created_at > now() - make_interval(secs => $3)),
                       count(*) FILTER (WHERE created_at > now() - make_interval(secs => $4))
                FROM actions
                WHERE rule = $1
                  AND target = $2
                  AND state NOT IN ('skipped', 'cancelled')
                  AND created_at > now() - make_interval(secs => greatest($3, $4))
                  AND NOT (fingerprint = $5 AND starts_at = $6 AND trigger = $7)
            $q$
            INTO v_in_cooldown, v_in_limit
            USING v_work ->> 'rule', v_work ->> 'target',
                  (v_work ->> 'cooldown')::double precision,
                  (v_work ->> 'per')::double precision,
                  v_alert ->> 'fingerprint', (v_alert ->> 'starts_at')::timestamptz,
                  v_alert ->> 'status';
        END IF;

        SELECT d.state, d.reason INTO v_state, v_reason
        FROM taskmedic_decide(
            v_work ->> 'render_error', (v_work ->> 'cooldown')::double precision,
            v_in_cooldown, (v_work ->> 'limit_count')::integer, v_in_limit,
            (v_work ->> 'approval')::boolean, v_work ->> 'cooldown_reason',
            v_work ->> 'circuit_reason') AS d;

        v_id := NULL;
        INSERT INTO actions (rule, fingerprint, starts_at, trigger, alert_id, labels, target,
                             state, reason, dry_run, plan, plan_hash, on_interrupt,
                             approval_expires_at, finished_at)
        VALUES (v_work ->> 'rule', v_alert ->> 'fingerprint',
                (v_alert ->> 'starts_at')::timestamptz, v_alert ->> 'status',
                v_alert_ids[(v_work ->> 'alert')::integer + 1], v_alert -> 'labels',
                v_work ->> 'target', v_state, v_reason, (v_work ->> 'dry_run')::boolean,
                v_plan, v_work ->> 'plan_hash', v_work ->> 'on_interrupt',
                CASE WHEN v_state = 'awaiting_approval'
                     THEN now() + make_interval(secs => p_approval_timeout) END,
                CASE WHEN v_state IN ('skipped', 'failed') THEN now() END)
        ON CONFLICT ON CONSTRAINT actions_once DO NOTHING
        RETURNING id INTO v_id;

        IF v_id IS NOT NULL THEN
            INSERT INTO steps (action_id, idx, name, kind, state)
            SELECT v_id, s.ord - 1, s.step ->> 'name', s.step ->> 'kind',
                   CASE WHEN v_state IN ('pending', 'awaiting_approval') THEN 'pending'
                        WHEN v_state = 'failed' THEN 'skipped'
                        ELSE v_state END
            FROM jsonb_array_elements(v_plan -> 'steps') WITH ORDINALITY AS s (step, ord);

            INSERT INTO events (action_id, actor, kind, from_state, to_state, message, data)
            VALUES (v_id, p_actor, 'created', NULL, v_state, v_reason,
                    jsonb_build_object(
                        'alert_id', v_alert_ids[(v_work ->> 'alert')::integer + 1],
                        'plan_hash', v_work ->> 'plan_hash',
                        'dry_run', (v_work ->> 'dry_run')::boolean,
                        'rule_source', v_work ->> 'rule_source'));

            IF v_state = 'pending' THEN
                PERFORM pg_notify('taskmedic_actions', v_id::text);
            END IF;
            PERFORM pg_notify('taskmedic_state', v_id::text);
        END IF;
        v_actions := v_actions || jsonb_build_array(jsonb_build_array(v_id, v_state, v_reason));
    END LOOP;

    RETURN jsonb_build_object('notification_id', v_notification_id,
                              'cancelled', to_jsonb(v_cancelled),
                              'actions', v_actions);
END
$$;

-- Group commit for POST /alerts (healer/journal/ingest_writer.py): the notifications that
-- arrive together are recorded by ONE statement, in ONE transaction, each decided and written
-- by taskmedic_ingest exactly as alone, in arrival order.
-- p_items: JSON array, one object per notification, with the arguments of taskmedic_ingest
-- under their names less the `p_` (receiver, status, group_key, truncated_alerts, payload,
-- alerts, work, plans, approval_timeout). Returns the JSON array of what taskmedic_ingest
-- returned for each, in the same order.
CREATE FUNCTION taskmedic_ingest_batch(p_items jsonb, p_actor text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_item jsonb;
    v_out jsonb := '[]';
BEGIN
    FOR v_item IN
        SELECT x.item FROM jsonb_array_elements(p_items) WITH ORDINALITY AS x (item, ord)
        ORDER BY x.ord
    LOOP
        v_out := v_out || jsonb_build_array(taskmedic_ingest(
            p_receiver => v_item ->> 'receiver',
            p_status => v_item ->> 'status',
            p_group_key => v_item ->> 'group_key',
            p_truncated_alerts => (v_item ->> 'truncated_alerts')::integer,
            p_payload => v_item -> 'payload',
            p_alerts => v_item -> 'alerts',
            p_work => v_item -> 'work',
            p_plans => v_item -> 'plans',
            p_approval_timeout => (v_item ->> 'approval_timeout')::double precision,
            p_actor => p_actor));
    END LOOP;
    RETURN v_out;
END
$$;
