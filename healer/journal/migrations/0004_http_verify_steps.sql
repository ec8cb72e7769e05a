-- Two step kinds: `http` (a request to an application's own API) and `verify` (wait until the
-- exporter shows the fault gone). Existing rows keep their kinds.
ALTER TABLE steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('script', 'sql', 'celery', 'repair', 'http', 'verify'));
