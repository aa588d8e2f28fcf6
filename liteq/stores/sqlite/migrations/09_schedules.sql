-- To version 9: periodic jobs' schedules (schema.sql).
-- Periodic jobs (`@store.periodic`), one row per schedule name. last_slot (epoch seconds)
-- only moves forward, and a slot's job is inserted in the transaction that moves it there,
-- only if it did: one job per (name, slot), however many workers find the slot due.
-- last_job: the job of that slot (NULL: skipped, or the schedule's start). seen_at: when
-- a worker that has the schedule in its code last said so (a removed schedule's row stays).
CREATE TABLE liteq_schedules (
    name      TEXT    PRIMARY KEY,
    spec      TEXT    NOT NULL,  -- a cron string, or `every Ns`
    tz        TEXT    NOT NULL,
    queue     TEXT    NOT NULL,
    last_slot INTEGER NOT NULL,
    last_job  INTEGER,
    seen_at   REAL    NOT NULL
) WITHOUT ROWID;
