-- POST /alerts in one statement: everything one notification records (healer/ingest.py).
--
-- taskmedic_ingest does all of it in one call, so recording an alert costs one round trip
-- rather than one per row, and it runs inside the caller's statement, so it commits or
-- rolls back as one transaction. The caller
-- takes the rule+target advisory locks first (query `ingest_notification`); this function
-- is VOLATILE, so each statement in it takes a fresh snapshot and its cooldown and circuit
-- breaker counts include every action committed by whoever held a lock before.

-- A resolved alert looks up the actions of its firing that have not started; without this
-- index that would be a read of the whole table for every resolved alert.
CREATE INDEX actions_unstarted ON actions (fingerprint, starts_at)
    WHERE state IN ('pending', 'awaiting_approval');

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
