-- To version 14: a claim fires no trigger, nor does any update. The counters hold a running
-- job under 'queued' (where it was before it started, and where a retry puts it back); the
-- view counts the running ones where read, through the index of active jobs (now by queue
-- too): as many as workers hold. Other changes of status or queue are counted by liteq's
-- statements (queries.sql: count_change); a delete's count and the high water of ids are
-- two triggers again, the second fired only by the highest id.
INSERT INTO liteq_counts (queue, status, n)
    SELECT queue, 'queued', n FROM liteq_counts WHERE status = 'running'
    ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
DELETE FROM liteq_counts WHERE status = 'running';

DROP VIEW liteq_job_counts;
DROP INDEX liteq_jobs_active;
CREATE INDEX liteq_jobs_active ON liteq_jobs (status, queue)
    WHERE status IN ('running', 'wait_async');
DROP TRIGGER liteq_jobs_deleted;
DROP TRIGGER liteq_jobs_count_update;

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
