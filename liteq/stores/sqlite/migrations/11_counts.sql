-- To version 11: counts of jobs by queue and status, kept by triggers, built here from a
-- scan of the jobs the file holds; and the index of queued jobs with an error (schema.sql).
CREATE TABLE liteq_counts (
    queue  TEXT    NOT NULL,
    status TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (queue, status)
) WITHOUT ROWID;

CREATE TRIGGER liteq_jobs_count_insert AFTER INSERT ON liteq_jobs
BEGIN
    INSERT INTO liteq_counts (queue, status, n) VALUES (new.queue, new.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER liteq_jobs_count_delete AFTER DELETE ON liteq_jobs
BEGIN
    UPDATE liteq_counts SET n = n - 1 WHERE queue = old.queue AND status = old.status;
END;

CREATE TRIGGER liteq_jobs_count_update AFTER UPDATE OF queue, status ON liteq_jobs
    WHEN old.status <> new.status OR old.queue <> new.queue
BEGIN
    INSERT INTO liteq_counts (queue, status, n)
        VALUES (old.queue, old.status, -1), (new.queue, new.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
END;

-- Queued jobs that carry an error (a retry's, or waiting for a worker that knows their
-- type): what the overview's count of the latter reads, without a scan of the queue.
CREATE INDEX liteq_jobs_erred ON liteq_jobs (queue) WHERE status = 'queued' AND error IS NOT NULL;

INSERT INTO liteq_counts (queue, status, n)
    SELECT queue, status, count(*) FROM liteq_jobs GROUP BY queue, status;
