"""The journal: the only code that reads or writes taskmedic's own PostgreSQL database.

Every other module of the healer calls these modules' functions; none runs SQL of its own
(tests/healer/test_journal_boundary.py holds that). Each module is named for what it serves:

- `ingest_writer`: recording webhook notifications, several to a transaction (group commit)
- `executor`: claims, leases and fencing, step and action transitions, the sweeper
- `actions`: the rows behind listing and showing actions; approve and cancel
- `logs`: appending step output, and reading it for the log API, the log hub and the CLI
- `console`: the web console's reads
- `sessions`: console sessions (logging out deletes the row)
- `stats`: what `/metrics` counts in the journal
- `retention`: pruning old log chunks in batches
- `replay`: `rules replay`'s reads and its question to the journal's decision
- `events`: the audit row of a state change; `channels`: the NOTIFY/LISTEN channel names
- `pool`: reaching the journal, the embedded server, what "unavailable" means
- `migrate`: applying `migrations/` under an advisory lock

`sql/` holds the named, parameterised queries, a file for each module (`ingest.sql` is
`ingest_writer`'s), loaded once by `queries`.
Whether an alert becomes an action is decided in one place, the PL/pgSQL `taskmedic_decide`,
inside the ingest transaction. `schema.sql` is the schema the migrations build, in one file.
"""
