"""The journal: the only code that writes taskmedic's own PostgreSQL database.

`migrations/` holds numbered schema files applied by `migrate.upgrade` under an advisory lock;
`sql/*.sql` hold named, parameterised queries loaded once by `queries.load`.
"""
