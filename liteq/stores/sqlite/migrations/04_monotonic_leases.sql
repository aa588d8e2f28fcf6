-- To version 4: a live worker's lease and max_runtime in its host's monotonic clock, which
-- no wall-clock step moves (schema.sql).
ALTER TABLE liteq_jobs ADD COLUMN lease_mono REAL;
ALTER TABLE liteq_jobs ADD COLUMN deadline_mono REAL;
