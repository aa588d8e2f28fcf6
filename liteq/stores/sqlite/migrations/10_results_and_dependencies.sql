-- To version 10: results (keep_result) and dependencies (`after=`); see schema.sql.
ALTER TABLE liteq_jobs ADD COLUMN result TEXT;
ALTER TABLE liteq_jobs ADD COLUMN keep_result REAL;
ALTER TABLE liteq_jobs ADD COLUMN expires_at REAL;
CREATE INDEX liteq_jobs_expiry ON liteq_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE liteq_dependencies (
    job_id   INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    done     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
CREATE INDEX liteq_dependencies_after ON liteq_dependencies (after_id);
