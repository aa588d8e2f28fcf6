-- To version 8: the autoscaled pools of `liteq work` supervisors (one row per supervisor
-- and pool), as each supervisor last reported them: at each decision and every few
-- seconds. A stopping supervisor deletes its rows; a killed one's are no longer listed
-- after 30 s and deleted at a later report. Read by `liteq status`, the dashboard and
-- /metrics. (IF NOT EXISTS: a schema whose version was set back by hand migrates again.)
CREATE TABLE IF NOT EXISTS {s}.pools (
    supervisor  text             NOT NULL,  -- host/pid/start/token of the supervisor
    name        text             NOT NULL,  -- its queues, comma-separated, or all
    host        text             NOT NULL,
    pid         bigint           NOT NULL,
    processes   bigint           NOT NULL,  -- its worker processes now
    minimum     bigint           NOT NULL,
    maximum     bigint           NOT NULL,
    target_wait double precision NOT NULL,  -- seconds
    decision    text             NOT NULL,  -- the last decision's log line ('' before one)
    decided_at  double precision,
    beat_at     double precision NOT NULL,
    PRIMARY KEY (supervisor, name)
);
