-- To version 8: how many jobs each live worker had in flight at its last beat (more than
-- one only with coroutine jobs, `liteq work --concurrency N`; schema.sql).
ALTER TABLE liteq_workers ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
