-- What the healer's /metrics reads from the journal at scrape time (healer/journal/stats.py).

-- name: count_by_state
SELECT state, count(*) FROM actions GROUP BY state

-- name: open_circuits
-- Rules whose circuit breaker is open for at least one target right now.
SELECT DISTINCT rule
FROM (
    SELECT a.rule, a.target
    FROM actions AS a
    JOIN unnest(%(rules)s::text[], %(counts)s::int[], %(pers)s::float8[]) AS l(rule, n, per)
      ON l.rule = a.rule
    WHERE a.state NOT IN ('skipped', 'cancelled')
      AND a.created_at > now() - make_interval(secs => l.per)
    GROUP BY a.rule, a.target, l.n
    HAVING count(*) >= l.n
) AS open
