-- To version 12: the autoscaled pools of `liteq work` supervisors (schema.sql).
CREATE TABLE liteq_pools (
    supervisor  TEXT    NOT NULL,  -- host/pid/start/token of the supervisor
    name        TEXT    NOT NULL,  -- the pool's name: its queues, comma-separated, or all
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    processes   INTEGER NOT NULL,  -- its worker processes now, running or starting
    minimum     INTEGER NOT NULL,
    maximum     INTEGER NOT NULL,
    target_wait REAL    NOT NULL,  -- seconds
    decision    TEXT    NOT NULL,  -- the last decision's log line ('' before the first)
    decided_at  REAL,
    beat_at     REAL    NOT NULL,
    PRIMARY KEY (supervisor, name)
) WITHOUT ROWID;
