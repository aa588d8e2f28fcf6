-- To version 4: how many jobs each live worker had in flight at its last beat (more than
-- one only with coroutine jobs, `liteq work --concurrency N`). (IF NOT EXISTS: a schema
-- whose version was set back by hand, its columns left as they were, migrates again.)
ALTER TABLE {s}.workers ADD COLUMN IF NOT EXISTS in_flight bigint NOT NULL DEFAULT 0;
