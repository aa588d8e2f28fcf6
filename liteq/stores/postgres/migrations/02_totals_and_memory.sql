-- To version 2: what workers finished in each queue since it was made (counters for
-- /metrics), and the memory each live worker uses.
ALTER TABLE {s}.queues ADD COLUMN completed bigint NOT NULL DEFAULT 0;
ALTER TABLE {s}.queues ADD COLUMN failed bigint NOT NULL DEFAULT 0;
ALTER TABLE {s}.workers ADD COLUMN rss bigint;
