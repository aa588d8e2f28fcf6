-- Version 1 of liteq's PostgreSQL schema. {s} is the schema's quoted name, {channel} the
-- quoted name of the channel NOTIFY wakes idle workers on; schema.py fills both in.
-- Times are epoch seconds (double precision), as in the SQLite file; status values are
-- stored: never rename them.

CREATE TABLE {s}.jobs (
    -- An identity column's sequence never goes back: an id is never reused.
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_type           text             NOT NULL,
    payload            text             NOT NULL,
    queue              text             NOT NULL,
    priority           bigint           NOT NULL,
    status             text             NOT NULL CHECK (status IN ('unqueued', 'queued',
                           'running', 'wait_async', 'completed', 'failed')),
    attempts           bigint           NOT NULL CHECK (attempts >= 0),
    max_attempts       bigint           NOT NULL CHECK (max_attempts >= 1),
    run_at             double precision NOT NULL,
    created_at         double precision NOT NULL,
    started_at         double precision,
    finished_at        double precision,
    coalesce_id        text,
    max_runtime        double precision,
    delete_on_complete boolean          NOT NULL,
    error              text,
    traceback          text,
    owner              text,  -- host/pid/process-start/token of the worker running it
    lease_until        double precision,
    lock_token         text,
    lock_until         double precision,
    lease_mono         double precision,  -- the owner host's monotonic clock
    deadline_mono      double precision
);

-- Claims: the best due job of some queues, or of every queue (most workers serve all).
CREATE INDEX jobs_claim ON {s}.jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX jobs_claim_any ON {s}.jobs (priority DESC, run_at, id)
    WHERE status = 'queued';

-- Coalescing is this index: at most one holder per coalesce_id, across every host.
CREATE UNIQUE INDEX jobs_coalesce ON {s}.jobs (coalesce_id)
    WHERE coalesce_id IS NOT NULL AND status <> 'completed';

-- Hung-job detection reads only the few running and waiting jobs.
CREATE INDEX jobs_active ON {s}.jobs (status) WHERE status IN ('running', 'wait_async');

-- New jobs, and jobs queued again, wake idle workers. Inserts notify once a statement
-- (a batch of a thousand jobs is one notification); a transaction's notifications are
-- delivered when it commits, and only if it does.
CREATE FUNCTION {s}.wake_workers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON {s}.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.wake_workers({channel});

CREATE TRIGGER jobs_queued_again AFTER UPDATE OF status ON {s}.jobs
    FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status <> 'queued')
    EXECUTE FUNCTION {s}.wake_workers({channel});

-- Queue settings. A paused queue accepts jobs; workers claim none from it.
CREATE TABLE {s}.queues (
    name   text    PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false
);

-- Live workers, for `liteq status`: each registers when it starts and beats at least every
-- lease/3 seconds while it runs.
CREATE TABLE {s}.workers (
    owner       text             PRIMARY KEY,
    host        text             NOT NULL,
    pid         bigint           NOT NULL,
    queues      text,  -- a JSON list of names, or NULL: every queue
    started_at  double precision NOT NULL,
    beat_at     double precision NOT NULL,
    lease       double precision NOT NULL,
    jobs_done   bigint           NOT NULL DEFAULT 0,
    current_job bigint
);

-- Jobs workers finished, per minute and queue (minute: epoch seconds // 60), kept a day.
CREATE TABLE {s}.stats (
    minute    bigint NOT NULL,
    queue     text   NOT NULL,
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue)
);
