-- To version 5: periodic jobs' schedules (`@store.periodic`), one row per name. last_slot
-- (epoch seconds) only moves forward, and a slot's job is inserted in the transaction that
-- moves it there, only if it did: one job per (name, slot) across every host. last_job: the
-- job of that slot (NULL: skipped, or the schedule's start). seen_at: when a worker that
-- has the schedule in its code last said so (a removed schedule's row stays: history).
CREATE TABLE IF NOT EXISTS {s}.schedules (
    name      text             PRIMARY KEY,
    spec      text             NOT NULL,  -- a cron string, or `every Ns`
    tz        text             NOT NULL,
    queue     text             NOT NULL,
    last_slot bigint           NOT NULL,
    last_job  bigint,
    seen_at   double precision NOT NULL
);
