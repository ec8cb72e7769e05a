-- Group commit for POST /alerts (healer/journal/ingest_writer.py): the notifications that
-- arrive while a writer is busy are recorded by ONE statement, in ONE transaction.
--
-- Every commit costs the journal a WAL flush and, since each notification NOTIFYs, a turn at
-- the cluster-wide lock PostgreSQL holds on the notification queue through that flush. Under
-- a storm one commit for several notifications pays that once. Each notification is still
-- decided and written by taskmedic_ingest exactly as alone, in arrival order, so a later one
-- sees the actions of an earlier one (cooldown, circuit breaker, the same firing twice) as it
-- would have seen them committed.
--
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
