-- Retention of raw webhook payloads: past log_retention a notification's payload becomes '{}'
-- (its alerts keep their labels and annotations). The partial index holds only the payloads
-- still there, so each hourly prune reads what it may prune, never the whole table.
CREATE INDEX notifications_payload_kept ON notifications (received_at)
    WHERE payload <> '{}'::jsonb;
