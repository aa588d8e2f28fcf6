-- liteq's SQLite schema: the one source of truth. Version 1 (PRAGMA user_version).
-- Times are epoch seconds (REAL). Status values are stored: never rename them.

CREATE TABLE liteq_jobs (
    -- AUTOINCREMENT: an id is never reused, so a stored id (an async callback's,
    -- a log line's) can never name a different job later.
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    job_type           TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    queue              TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN
                           ('unqueued', 'queued', 'running', 'wait_async', 'completed', 'failed')),
    attempts           INTEGER NOT NULL CHECK (attempts >= 0),
    max_attempts       INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at             REAL    NOT NULL,
    created_at         REAL    NOT NULL,
    started_at         REAL,
    finished_at        REAL,
    coalesce_id        TEXT,
    max_runtime        REAL,
    delete_on_complete INTEGER NOT NULL,
    error              TEXT,
    traceback          TEXT,
    owner              TEXT,    -- host/pid/process-start/token of the worker running it
    lease_until        REAL,    -- the owner renews this while the job runs
    lock_token         TEXT,    -- store.locked() mutex
    lock_until         REAL
);

-- The claim: best due job first (priority, then run_at, then FIFO).
CREATE INDEX liteq_jobs_claim ON liteq_jobs (priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX liteq_jobs_claim_by_queue ON liteq_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';

-- Coalescing is this index: at most one holder per coalesce_id, across every process.
CREATE UNIQUE INDEX liteq_jobs_coalesce ON liteq_jobs (coalesce_id)
    WHERE coalesce_id IS NOT NULL
      AND status IN ('unqueued', 'queued', 'running', 'wait_async', 'failed');

-- Hung-job detection reads only the few running and waiting jobs.
CREATE INDEX liteq_jobs_active ON liteq_jobs (status)
    WHERE status IN ('running', 'wait_async');

PRAGMA user_version = 1;
