-- To version 6: what workers finished in each queue since it was made (counters for
-- /metrics), and the memory each live worker uses (schema.sql).
ALTER TABLE liteq_queues ADD COLUMN completed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE liteq_queues ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE liteq_workers ADD COLUMN rss INTEGER;
