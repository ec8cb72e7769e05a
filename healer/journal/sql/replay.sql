-- `taskmedic rules replay` (healer/journal/replay.py): what the journal received, read only.

-- name: alerts_since
-- Alerts the journal received since a moment, oldest first (rules replay). `received` is the
-- alert exactly as a plan holds it (Alertmanager's field names and time offsets, endsAt's zero
-- time), when the alert started an action: the columns keep the times, not how they were
-- written, and a firing alert's zero endsAt as NULL.
SELECT al.id, al.received_at, al.status, al.fingerprint, al.starts_at, al.ends_at, al.labels,
       al.annotations, al.generator_url,
       (SELECT a.plan -> 'alert' FROM actions AS a WHERE a.alert_id = al.id
        ORDER BY a.id LIMIT 1) AS received,
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', a.id, 'rule', a.rule,
                                                     'state', a.state, 'reason', a.reason,
                                                     'plan_hash', a.plan_hash)
                                  ORDER BY a.id)
                 FROM actions AS a WHERE a.alert_id = al.id), '[]'::jsonb) AS actions
FROM alerts AS al
WHERE al.received_at >= %(since)s
ORDER BY al.id

-- name: decide
-- The decision ingest makes for each action (taskmedic_decide, migration 0002), alone: the
-- counts are the caller's, nothing is read or written.
SELECT state, reason
FROM taskmedic_decide(
    render_error => %(render_error)s, cooldown => %(cooldown)s,
    in_cooldown => %(in_cooldown)s, limit_count => %(limit_count)s, in_limit => %(in_limit)s,
    approval => %(approval)s, cooldown_reason => %(cooldown_reason)s,
    circuit_reason => %(circuit_reason)s)
