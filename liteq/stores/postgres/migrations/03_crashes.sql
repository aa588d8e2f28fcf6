-- To version 3: how many times a worker died while running each job: at the worker's
-- max_crashes it fails for good. (IF NOT EXISTS: a schema whose version was set back by
-- hand, its columns left as they were, migrates again without an error.)
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS crashes bigint NOT NULL DEFAULT 0;
-- A job queued with no delay is now due at once (run_at -1, record.DUE_AT_ONCE) rather than
-- at the wall-clock time of its enqueue; those already waiting join them, in id order.
UPDATE {s}.jobs SET run_at = -1.0 WHERE status = 'queued' AND run_at <= created_at;
