-- To version 2: ids without AUTOINCREMENT (its counter cost a page write per enqueue; ids
-- stay above every id there was through liteq_meta's high water) and one claim index
-- instead of two. SQLite cannot drop AUTOINCREMENT in place: the table is rebuilt.
CREATE TABLE liteq_jobs_v2 (
    id                 INTEGER PRIMARY KEY,
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
    owner              TEXT,
    lease_until        REAL,
    lock_token         TEXT,
    lock_until         REAL
);
INSERT INTO liteq_jobs_v2 SELECT * FROM liteq_jobs;
CREATE TABLE liteq_meta (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    high_water INTEGER NOT NULL
);
INSERT INTO liteq_meta VALUES (1, coalesce(
    (SELECT seq FROM sqlite_sequence WHERE name = 'liteq_jobs'), 0));
DROP TABLE liteq_jobs;
ALTER TABLE liteq_jobs_v2 RENAME TO liteq_jobs;
CREATE INDEX liteq_jobs_claim ON liteq_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE UNIQUE INDEX liteq_jobs_coalesce ON liteq_jobs (coalesce_id)
    WHERE coalesce_id IS NOT NULL
      AND status IN ('unqueued', 'queued', 'running', 'wait_async', 'failed');
CREATE INDEX liteq_jobs_active ON liteq_jobs (status)
    WHERE status IN ('running', 'wait_async');
CREATE TRIGGER liteq_jobs_high_water AFTER DELETE ON liteq_jobs
    WHEN NOT EXISTS (SELECT 1 FROM liteq_jobs WHERE id > old.id)
BEGIN
    UPDATE liteq_meta SET high_water = old.id WHERE high_water < old.id;
END;
