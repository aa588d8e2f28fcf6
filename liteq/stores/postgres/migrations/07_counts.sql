-- To version 7: how many jobs each queue holds in each status, kept by triggers in the
-- transaction of every insert, delete and change of status, whoever writes. (IF NOT EXISTS
-- and OR REPLACE: a schema whose version was set back by hand migrates again.)
--
-- One counter row per (queue, status) updated by every worker's transaction would hold
-- its row lock until that transaction commits, and so make concurrent workers take turns.
-- Instead each statement only inserts its net changes (count_changes), and now and then
-- one transaction folds them into `counts`: how many = counts.n + the sum of its unfolded
-- changes, read in one snapshot. `liteq db check` compares it with a scan.
CREATE TABLE IF NOT EXISTS {s}.counts (
    queue  text   NOT NULL,
    status text   NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (queue, status)
);
CREATE TABLE IF NOT EXISTS {s}.count_changes (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue  text   NOT NULL,
    status text   NOT NULL,
    n      bigint NOT NULL
);

-- Move every unfolded change into counts, and say whether it did. One folder at a time
-- (an advisory lock, held to the end of its transaction): two could update the same
-- counter rows in different orders and deadlock. `wait` false gives up at once when
-- another transaction folds (a worker's trigger never waits for one).
CREATE OR REPLACE FUNCTION {s}.fold_counts(wait boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF wait THEN
        PERFORM pg_advisory_xact_lock(hashtext('liteq counts {s}'));
    ELSIF NOT pg_try_advisory_xact_lock(hashtext('liteq counts {s}')) THEN
        RETURN false;
    END IF;
    WITH gone AS (DELETE FROM {s}.count_changes RETURNING queue, status, n)
    INSERT INTO {s}.counts AS c (queue, status, n)
        SELECT queue, status, sum(n) FROM gone GROUP BY queue, status
        ON CONFLICT (queue, status) DO UPDATE SET n = c.n + excluded.n;
    RETURN true;
END
$$;

-- Record a statement's net changes (rows of `gone` leave their (queue, status), rows of
-- `came` join theirs: a lease renewal changes nothing and records nothing), and fold
-- once in about 128 changes, so that a count never sums many rows.
CREATE OR REPLACE FUNCTION {s}.count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo bigint;
    hi bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH added AS (
            INSERT INTO {s}.count_changes (queue, status, n)
                SELECT queue, status, count(*) FROM came GROUP BY queue, status
                RETURNING id)
        SELECT min(id), max(id) INTO lo, hi FROM added;
    ELSIF TG_OP = 'DELETE' THEN
        WITH added AS (
            INSERT INTO {s}.count_changes (queue, status, n)
                SELECT queue, status, -count(*) FROM gone GROUP BY queue, status
                RETURNING id)
        SELECT min(id), max(id) INTO lo, hi FROM added;
    ELSE
        WITH added AS (
            INSERT INTO {s}.count_changes (queue, status, n)
                SELECT queue, status, sum(n) FROM (
                    SELECT queue, status, -1 AS n FROM gone
                    UNION ALL SELECT queue, status, 1 FROM came) AS moves
                GROUP BY queue, status HAVING sum(n) <> 0
                RETURNING id)
        SELECT min(id), max(id) INTO lo, hi FROM added;
    END IF;
    IF hi / 128 > (lo - 1) / 128 THEN
        PERFORM {s}.fold_counts(false);
    END IF;
    RETURN NULL;
END
$$;

-- Creating the triggers locks the table against writers until this migration commits, so
-- the scan below misses no job that a trigger does not count.
DROP TRIGGER IF EXISTS jobs_count_insert ON {s}.jobs;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs
    REFERENCING NEW TABLE AS came FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_jobs();
DROP TRIGGER IF EXISTS jobs_count_update ON {s}.jobs;
CREATE TRIGGER jobs_count_update AFTER UPDATE ON {s}.jobs
    REFERENCING OLD TABLE AS gone NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_jobs();
DROP TRIGGER IF EXISTS jobs_count_delete ON {s}.jobs;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON {s}.jobs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_jobs();

DELETE FROM {s}.count_changes;
DELETE FROM {s}.counts;
INSERT INTO {s}.counts (queue, status, n)
    SELECT queue, status, count(*) FROM {s}.jobs GROUP BY queue, status;

-- Queued jobs that carry an error (a retry's, or waiting for a worker that knows their
-- type): what the overview's count of the latter reads, without a scan of the queue.
CREATE INDEX IF NOT EXISTS jobs_erred ON {s}.jobs (queue)
    WHERE status = 'queued' AND error IS NOT NULL;
