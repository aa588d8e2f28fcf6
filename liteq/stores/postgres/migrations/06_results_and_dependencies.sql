-- To version 6: results (keep_result) and dependencies (`after=`). (IF NOT EXISTS: a
-- schema whose version was set back by hand migrates again.)
-- keep_result: what its run returned (JSON), kept keep_result seconds once it completed,
-- until expires_at (then workers purge it).
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS result text;
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS keep_result double precision;
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS expires_at double precision;
CREATE INDEX IF NOT EXISTS jobs_expiry ON {s}.jobs (expires_at) WHERE expires_at IS NOT NULL;

-- job_id runs after after_id; done once after_id completed. A job that waits is queued
-- with its run_at held far ahead (liteq/record.py: WAITING), so no claim sees it; the
-- completion of its last dependency gives it back its own.
CREATE TABLE IF NOT EXISTS {s}.dependencies (
    job_id   bigint  NOT NULL,
    after_id bigint  NOT NULL,
    done     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, after_id)
);
CREATE INDEX IF NOT EXISTS dependencies_after ON {s}.dependencies (after_id);

-- A job whose dependencies completed becomes due: wake idle workers, as for a new job.
DROP TRIGGER IF EXISTS jobs_released ON {s}.jobs;
CREATE TRIGGER jobs_released AFTER UPDATE OF run_at ON {s}.jobs
    FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.run_at >= 1e12 - 2
        AND NEW.run_at < 1e12 - 2)
    EXECUTE FUNCTION {s}.wake_workers({channel});

-- A result is ready, or a job failed: wake those waiting for it (store.result), with the
-- payload 'done' (idle workers are not woken by it).
CREATE OR REPLACE FUNCTION {s}.job_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], 'done');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS jobs_done ON {s}.jobs;
CREATE TRIGGER jobs_done AFTER UPDATE OF status ON {s}.jobs
    FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status <> 'failed'
        OR NEW.status = 'completed' AND NEW.keep_result IS NOT NULL
            AND OLD.status <> 'completed')
    EXECUTE FUNCTION {s}.job_done({channel});
