-- To version 10: complete_and_claim (migration 9) as it was, but for its fenced delete,
-- which selects the completed runs through the primary key alone. Its plan could AND the
-- ids' bitmap with one of jobs_active (status = 'running'), and that index keeps an entry
-- for every run claimed since the table was last vacuumed: on a busy queue, a scan of
-- thousands of dead entries in every batch. The claim and the release of dependents are
-- unchanged (queries.sql's `claim` and transitions.release_dependents: change them here
-- too, in a migration that replaces this function).
CREATE OR REPLACE FUNCTION {s}.complete_and_claim(
    p_ids bigint[], p_attempts bigint[], p_done_owner text, p_waiting double precision,
    p_queues text[], p_owner text, p_now double precision, p_mono double precision,
    p_lease double precision, p_limit bigint, p_hold boolean)
RETURNS SETOF {s}.jobs LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
    waiting bigint[];
BEGIN
    IF cardinality(p_ids) > 0 THEN
        -- (No join with unnest(p_ids, p_attempts): its plan, kept for the session from
        -- the first calls, may scan that function once per running job. The status is
        -- tested as IS TRUE so that no plan reads jobs_active: a bitmap of that index
        -- reads every entry a claim left there since the last vacuum.)
        WITH deleted AS (
            DELETE FROM {s}.jobs AS j
            WHERE j.id = ANY(p_ids) AND j.attempts = p_attempts[array_position(p_ids, j.id)]
                AND j.owner = p_done_owner AND (j.status = 'running') IS TRUE
            RETURNING j.id)
        SELECT count(*) INTO gone FROM deleted;
        IF gone <> cardinality(p_ids) THEN
            RAISE EXCEPTION 'liteq: % of % completions are no longer their run''s',
                cardinality(p_ids) - gone, cardinality(p_ids)
                USING ERRCODE = 'LQ001', HINT = 'the worker records them one by one instead';
        END IF;
        WITH finished AS (
            UPDATE {s}.dependencies SET done = true
            WHERE after_id = ANY(p_ids) AND NOT done
            RETURNING job_id)
        SELECT array_agg(DISTINCT job_id ORDER BY job_id) INTO waiting FROM finished;
        IF waiting IS NOT NULL THEN
            -- Lock the dependents first, in id order, then read their dependencies afresh:
            -- two parents completing at once release their common dependent exactly once.
            PERFORM 1 FROM {s}.jobs WHERE id = ANY(waiting) ORDER BY id FOR UPDATE;
            UPDATE {s}.jobs AS j SET run_at = j.run_at - p_waiting
            WHERE j.id = ANY(waiting) AND j.status = 'queued' AND j.run_at >= p_waiting - 2
                AND NOT EXISTS (SELECT 1 FROM {s}.dependencies AS d
                                WHERE d.job_id = j.id AND NOT d.done);
        END IF;
    END IF;
    IF p_queues IS NULL THEN
        RETURN QUERY WITH picked AS (
            SELECT c.id FROM {s}.jobs AS c
            WHERE c.status = 'queued' AND c.run_at <= p_now
                AND (c.lock_token IS NULL OR c.lock_until < p_now)
                AND NOT EXISTS (SELECT 1 FROM {s}.queues AS q
                                WHERE q.name = c.queue AND q.paused)
            ORDER BY c.priority DESC, c.run_at, c.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
        UPDATE {s}.jobs AS j SET status = 'running', attempts = j.attempts + 1,
            started_at = CASE WHEN p_hold AND j.max_runtime IS NOT NULL THEN NULL ELSE p_now END,
            finished_at = NULL, owner = p_owner,
            lease_until = p_now + p_lease, lease_mono = p_mono + p_lease,
            deadline_mono = CASE WHEN p_hold THEN NULL ELSE p_mono + j.max_runtime END
        FROM picked WHERE j.id = picked.id
        RETURNING j.*;
    ELSIF cardinality(p_queues) = 1 THEN
        RETURN QUERY WITH picked AS (
            SELECT c.id FROM {s}.jobs AS c
            WHERE c.status = 'queued' AND c.run_at <= p_now
                AND (c.lock_token IS NULL OR c.lock_until < p_now) AND c.queue = p_queues[1]
                AND NOT EXISTS (SELECT 1 FROM {s}.queues AS q
                                WHERE q.name = c.queue AND q.paused)
            ORDER BY c.priority DESC, c.run_at, c.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
        UPDATE {s}.jobs AS j SET status = 'running', attempts = j.attempts + 1,
            started_at = CASE WHEN p_hold AND j.max_runtime IS NOT NULL THEN NULL ELSE p_now END,
            finished_at = NULL, owner = p_owner,
            lease_until = p_now + p_lease, lease_mono = p_mono + p_lease,
            deadline_mono = CASE WHEN p_hold THEN NULL ELSE p_mono + j.max_runtime END
        FROM picked WHERE j.id = picked.id
        RETURNING j.*;
    ELSE
        RETURN QUERY WITH picked AS (
            SELECT c.id FROM {s}.jobs AS c
            WHERE c.status = 'queued' AND c.run_at <= p_now
                AND (c.lock_token IS NULL OR c.lock_until < p_now) AND c.queue = ANY(p_queues)
                AND NOT EXISTS (SELECT 1 FROM {s}.queues AS q
                                WHERE q.name = c.queue AND q.paused)
            ORDER BY c.priority DESC, c.run_at, c.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
        UPDATE {s}.jobs AS j SET status = 'running', attempts = j.attempts + 1,
            started_at = CASE WHEN p_hold AND j.max_runtime IS NOT NULL THEN NULL ELSE p_now END,
            finished_at = NULL, owner = p_owner,
            lease_until = p_now + p_lease, lease_mono = p_mono + p_lease,
            deadline_mono = CASE WHEN p_hold THEN NULL ELSE p_mono + j.max_runtime END
        FROM picked WHERE j.id = picked.id
        RETURNING j.*;
    END IF;
END
$$;
