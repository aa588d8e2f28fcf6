-- To version 5: queues that can be paused, the registry of live workers, and counts of
-- finished jobs per minute (schema.sql).
-- Queue settings. A paused queue accepts jobs; workers claim none from it.
CREATE TABLE liteq_queues (
    name   TEXT    PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Live workers, for `liteq status`: each registers when it starts and beats at least every
-- lease/3 seconds while it runs; a row whose beat is older than its lease is a dead worker's.
CREATE TABLE liteq_workers (
    owner       TEXT    PRIMARY KEY,  -- host/pid/start/token, as on the jobs it claims
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    queues      TEXT,                 -- a JSON list of names, or NULL: every queue
    started_at  REAL    NOT NULL,
    beat_at     REAL    NOT NULL,
    lease       REAL    NOT NULL,
    jobs_done   INTEGER NOT NULL DEFAULT 0,
    current_job INTEGER               -- the job it runs now, if any
) WITHOUT ROWID;

-- Jobs workers finished, per minute and queue (minute: epoch seconds // 60), kept a day.
CREATE TABLE liteq_stats (
    minute    INTEGER NOT NULL,
    queue     TEXT    NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue)
) WITHOUT ROWID;
