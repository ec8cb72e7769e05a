-- The healer's journal, beside the demo app's database (POSTGRES_DB=app). Run once by the
-- postgres image on an empty data volume; `taskmedic db upgrade` creates the tables.
CREATE DATABASE taskmedic_journal;
