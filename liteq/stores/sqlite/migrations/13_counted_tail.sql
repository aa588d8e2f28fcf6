-- To version 13: inserts fire no trigger. The jobs up to liteq_meta.counted_to are in
-- liteq_counts; newer ones are counted where read (liteq_job_counts) until folded in. The
-- counts as version 11 built and kept them hold every job there is: counted_to is the
-- highest id. The high water of ids moves into the one trigger a delete fires.
ALTER TABLE liteq_meta ADD COLUMN counted_to INTEGER NOT NULL DEFAULT 0;
UPDATE liteq_meta SET counted_to = coalesce((SELECT max(id) FROM liteq_jobs), 0);

DROP TRIGGER liteq_jobs_count_insert;
DROP TRIGGER liteq_jobs_count_delete;
DROP TRIGGER liteq_jobs_count_update;
DROP TRIGGER liteq_jobs_high_water;

CREATE VIEW liteq_job_counts (queue, status, n) AS
    SELECT queue, status, sum(n) FROM (
        SELECT queue, status, n FROM liteq_counts
        UNION ALL
        SELECT queue, status, count(*) FROM liteq_jobs
        WHERE id > (SELECT counted_to FROM liteq_meta) GROUP BY queue, status)
    GROUP BY queue, status;

CREATE TRIGGER liteq_jobs_deleted AFTER DELETE ON liteq_jobs
BEGIN
    UPDATE liteq_counts SET n = n - 1
        WHERE queue = old.queue AND status = old.status
            AND old.id <= (SELECT counted_to FROM liteq_meta);
    UPDATE liteq_meta SET high_water = old.id  -- (by its key: no temporary table)
        WHERE one = 1 AND high_water < old.id
            AND NOT EXISTS (SELECT 1 FROM liteq_jobs WHERE id > old.id);
END;

CREATE TRIGGER liteq_jobs_count_update AFTER UPDATE OF queue, status ON liteq_jobs
    WHEN (old.status <> new.status OR old.queue <> new.queue)
        AND old.id <= (SELECT counted_to FROM liteq_meta)
BEGIN
    INSERT INTO liteq_counts (queue, status, n)
        VALUES (old.queue, old.status, -1), (new.queue, new.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
END;
