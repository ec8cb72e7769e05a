-- `taskmedic rules replay` (healer/journal/replay.py): what the journal received, read only.

-- name: alerts_since
-- Alerts the journal received since a moment, oldest first (rules replay).
SELECT al.id, al.received_at, al.status, al.fingerprint, al.starts_at, al.ends_at, al.labels,
       al.annotations, al.generator_url,
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', a.id, 'rule', a.rule,
                                                     'state', a.state, 'reason', a.reason)
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
