-- liteq's SQLite schema: the one source of truth. Version 14 (PRAGMA user_version).
-- Times are epoch seconds (REAL). Status values are stored: never rename them.
-- A status test is written with = and <>, or IN with at most two values: SQLite checks a
-- longer IN list against a temporary b-tree that it builds for each insert or update.

CREATE TABLE liteq_jobs (
    -- A committed job's id is never reused, so a stored id (an async callback's, a log
    -- line's) can never name a different job later. liteq inserts max(largest id, high
    -- water) + 1 (see liteq_meta), which costs no write per insert, unlike AUTOINCREMENT.
    -- (An insert rolled back leaves no trace: its id goes to the next job.)
    id                 INTEGER PRIMARY KEY,
    job_type           TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    queue              TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status = 'unqueued' OR status = 'queued'
                           OR status = 'running' OR status = 'wait_async'
                           OR status = 'completed' OR status = 'failed'),
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
    lock_until         REAL,
    -- The owner host's monotonic clock (never stepped) when the lease ends and when
    -- max_runtime is up: how a live worker on the same host is judged stuck or over time.
    lease_mono         REAL,
    deadline_mono      REAL,
    -- How many times a worker died while running it: at max_crashes it fails for good.
    crashes            INTEGER NOT NULL DEFAULT 0,
    -- keep_result: what its run returned (JSON), kept keep_result seconds once it
    -- completed, until expires_at (then workers purge it).
    result             TEXT,
    keep_result        REAL,
    expires_at         REAL
);

-- The claim: in each queue, best due job first, in the claim order (the `claim_order`
-- block of liteq/stores/sqlite/queries.sql says it; the claim index must follow it).
-- One index, so an enqueue writes one index page: a claim over several queues seeks
-- the best jobs of each (their names come from this index too) and merges them.
CREATE INDEX liteq_jobs_claim ON liteq_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';

-- Coalescing is this index: at most one holder per coalesce_id, across every process.
CREATE UNIQUE INDEX liteq_jobs_coalesce ON liteq_jobs (coalesce_id)
    WHERE coalesce_id IS NOT NULL AND status <> 'completed';

-- Hung-job detection reads only the few running and waiting jobs; counts read the running
-- ones by queue (liteq_job_counts, below: its condition repeats this one's, so that SQLite
-- sees it can use this index).
CREATE INDEX liteq_jobs_active ON liteq_jobs (status, queue)
    WHERE status IN ('running', 'wait_async');

-- Workers purge expired results by this.
CREATE INDEX liteq_jobs_expiry ON liteq_jobs (expires_at) WHERE expires_at IS NOT NULL;

-- Dependencies (`after=`): job_id runs after after_id; done once after_id completed. A job
-- that waits is queued with its run_at held far ahead (liteq/record.py: WAITING), so the
-- claim never sees it; the completion of its last dependency gives it back its own.
CREATE TABLE liteq_dependencies (
    job_id   INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    done     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
CREATE INDEX liteq_dependencies_after ON liteq_dependencies (after_id);

-- The largest id ever deleted while it was the largest: ids stay above it.
-- `counted_to`: the jobs with an id up to it are in liteq_counts (below).
CREATE TABLE liteq_meta (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    high_water INTEGER NOT NULL,
    counted_to INTEGER NOT NULL DEFAULT 0
);
INSERT INTO liteq_meta (one, high_water) VALUES (1, 0);

-- How many jobs each queue holds in each status, so that counting costs a few rows
-- whatever the queue's size. liteq_counts holds the jobs up to liteq_meta.counted_to;
-- newer jobs, the tail, are counted where read (liteq_job_counts) and folded in from time
-- to time (queries.sql, fold_counts). A running job is held under 'queued' (where it was,
-- and where a retry puts it back), and the view counts the running ones where read, by the
-- index of active jobs: no more than workers hold. So neither an insert nor a claim pays
-- for counting. A delete is counted by its trigger below, whoever deletes; any other change
-- of a job's counter by liteq's own statement in its transaction (queries.sql,
-- count_change): a trigger on updates would cost a worker's claim a tenth of its time in
-- SQLite even when it counts nothing (docs/performance.md). A program that changes a
-- job's status or queue with SQL of its own moves no counter: `liteq db check` finds that
-- against a scan, and `--repair` sets the counts again. A row stays at 0 once its jobs go.
CREATE TABLE liteq_counts (
    queue  TEXT    NOT NULL,
    status TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (queue, status)
) WITHOUT ROWID;

CREATE VIEW liteq_job_counts (queue, status, n) AS
    WITH running (queue, n) AS MATERIALIZED (
        SELECT queue, count(*) FROM liteq_jobs
        WHERE status IN ('running', 'wait_async') AND status = 'running'
            AND id <= (SELECT counted_to FROM liteq_meta) GROUP BY queue)
    SELECT queue, status, sum(n) FROM (
        SELECT queue, status, n FROM liteq_counts
        UNION ALL
        SELECT queue, 'queued', -n FROM running
        UNION ALL
        SELECT queue, 'running', n FROM running
        UNION ALL
        SELECT queue, status, count(*) FROM liteq_jobs
        WHERE id > (SELECT counted_to FROM liteq_meta) GROUP BY queue, status)
    GROUP BY queue, status;

-- A delete's count: a trigger of its own, as the high water's fires only for the highest id.
CREATE TRIGGER liteq_jobs_deleted AFTER DELETE ON liteq_jobs
BEGIN
    UPDATE liteq_counts SET n = n - 1
        WHERE queue = old.queue AND status = iif(old.status = 'running', 'queued', old.status)
            AND old.id <= (SELECT counted_to FROM liteq_meta);
END;

CREATE TRIGGER liteq_jobs_high_water AFTER DELETE ON liteq_jobs
    WHEN NOT EXISTS (SELECT 1 FROM liteq_jobs WHERE id > old.id)
BEGIN
    UPDATE liteq_meta SET high_water = old.id WHERE high_water < old.id;
END;

-- Queued jobs that carry an error (a retry's, or waiting for a worker that knows their
-- type): what the overview's count of the latter reads, without a scan of the queue.
CREATE INDEX liteq_jobs_erred ON liteq_jobs (queue) WHERE status = 'queued' AND error IS NOT NULL;

-- Queue settings, and what workers finished in each queue since it was made. A paused
-- queue accepts jobs; workers claim none from it.
CREATE TABLE liteq_queues (
    name      TEXT    PRIMARY KEY,
    paused    INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0  -- attempts that failed
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
    current_job INTEGER,              -- the job it runs now, if any
    rss         INTEGER,              -- bytes of memory it used at its last beat
    in_flight   INTEGER NOT NULL DEFAULT 0  -- jobs it had in flight at its last beat
) WITHOUT ROWID;

-- Jobs workers finished, per minute and queue (minute: epoch seconds // 60), kept a day.
CREATE TABLE liteq_stats (
    minute    INTEGER NOT NULL,
    queue     TEXT    NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue)
) WITHOUT ROWID;

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

-- The autoscaled pools of `liteq work` supervisors (one row per supervisor and pool), as
-- each supervisor last reported them: at each decision and every few seconds. A stopping
-- supervisor deletes its rows; a killed one's are no longer listed after 30 s and deleted
-- at a later report. Read by `liteq status`, the dashboard and /metrics.
CREATE TABLE liteq_pools (
    supervisor  TEXT    NOT NULL,  -- host/pid/start/token of the supervisor
    name        TEXT    NOT NULL,  -- the pool's name: its queues, comma-separated, or all
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    processes   INTEGER NOT NULL,  -- its worker processes now, running or starting
    minimum     INTEGER NOT NULL,
    maximum     INTEGER NOT NULL,
    target_wait REAL    NOT NULL,  -- seconds
    decision    TEXT    NOT NULL,  -- the last decision's log line ('' before the first)
    decided_at  REAL,
    beat_at     REAL    NOT NULL,
    PRIMARY KEY (supervisor, name)
) WITHOUT ROWID;

PRAGMA user_version = 14;
