-- To version 7: how many times a worker died while running each job (schema.sql).
ALTER TABLE liteq_jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
-- A job queued with no delay is now due at once (run_at -1, record.DUE_AT_ONCE) rather than
-- at the wall-clock time of its enqueue; those already waiting join them, in id order.
UPDATE liteq_jobs SET run_at = -1.0 WHERE status = 'queued' AND run_at <= created_at;
