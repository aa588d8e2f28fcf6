-- The statements of PostgresStore, by name (`-- name: NAME` starts a block). Python fills
-- in {s} (the schema's quoted name), {columns} (every column of jobs, as Record lists
-- them), {new_columns}, {values}, {assignments} and {arrays} (each column but the id: its
-- name, a %s, `name = %s`, `%(name)b::type[]`), and, from liteq's own code only, {where},
-- {order} and {set}. Parameters are psycopg's: %s, or %(name)s.

-- name: get
SELECT {columns} FROM {s}.jobs WHERE id = %s

-- Read for update: the row stays as read until the transaction ends.
-- name: get_for_update
SELECT {columns} FROM {s}.jobs WHERE id = %s FOR UPDATE

-- Several rows for update, locked in id order (the sort runs below the locking): another
-- writer that locks some of these rows in the same order waits instead of deadlocking.
-- name: get_many_for_update
SELECT {columns} FROM {s}.jobs WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE

-- name: coalesce_holder
SELECT {columns} FROM {s}.jobs WHERE coalesce_id = %s AND status <> 'completed'

-- name: coalesce_holder_for_update
SELECT {columns} FROM {s}.jobs WHERE coalesce_id = %s AND status <> 'completed' FOR UPDATE

-- name: active
SELECT {columns} FROM {s}.jobs WHERE status IN ('running', 'wait_async')

-- A held coalesce id makes it insert nothing and return no row.
-- name: insert
INSERT INTO {s}.jobs ({new_columns}) VALUES ({values}) ON CONFLICT DO NOTHING RETURNING id

-- A batch of new jobs that hold no coalesce id, one array per column but the id, by its
-- name, sent in binary (%b: text arrays would be quoted element by element). Their ids are
-- taken in the arrays' order (PostgreSQL evaluates a volatile output column after ORDER BY),
-- so that sorted, the ids returned are the jobs' in order.
-- name: insert_batch
INSERT INTO {s}.jobs (id, {new_columns}) OVERRIDING SYSTEM VALUE
SELECT nextval(pg_get_serial_sequence('{s}.jobs', 'id')), {new_columns}
FROM unnest({arrays}) WITH ORDINALITY AS t({new_columns}, n)
ORDER BY n
RETURNING id

-- Rows that differ only in job_type and payload (enqueue_many's common call): those two
-- as arrays, every other column once, so that neither side handles a value per row per
-- column.
-- name: insert_alike
INSERT INTO {s}.jobs (id, {new_columns}) OVERRIDING SYSTEM VALUE
SELECT nextval(pg_get_serial_sequence('{s}.jobs', 'id')), {alike_values}
FROM unnest(%(job_type)b::text[], %(payload)b::text[]) WITH ORDINALITY AS t(job_type, payload, n)
ORDER BY n
RETURNING id

-- name: update
UPDATE {s}.jobs SET {assignments} WHERE id = %s

-- name: delete
DELETE FROM {s}.jobs WHERE id = %s

-- Fenced: only while the row is still the claimed run (id, owner, attempt).
-- name: delete_fenced
DELETE FROM {s}.jobs WHERE id = %s AND owner = %s AND attempts = %s AND status = 'running'

-- name: update_fenced
UPDATE {s}.jobs SET {set} WHERE id = %s AND owner = %s AND attempts = %s AND status = 'running'

-- One owner's runs at once: their ids and attempts as two arrays. (No join with
-- unnest(ids, attempts): a prepared plan may scan that function once per running job.)
-- name: delete_fenced_many
DELETE FROM {s}.jobs AS j
WHERE j.id = ANY(%(ids)s::bigint[])
    AND j.attempts = (%(attempts)s::bigint[])[array_position(%(ids)s::bigint[], j.id)]
    AND j.owner = %(owner)s AND j.status = 'running'
RETURNING j.id

-- The claim: the best {limit} due, unlocked jobs of unpaused queues, started at once; the
-- claim order (contract: Tx.claim) is written here for PostgreSQL, and the claim indexes,
-- jobs_claim and jobs_claim_any (migrations/01_initial.sql), follow it. The function
-- complete_and_claim (migrations/09_complete_and_claim.sql) repeats it: change both.
-- SKIP LOCKED passes over rows other claims hold, so workers claim side by side instead
-- of in turn. {where} narrows it to some queues. The rows come back in no order.
-- name: claim
WITH picked AS (
    SELECT id FROM {s}.jobs AS c
    WHERE status = 'queued' AND run_at <= %(now)s
        AND (lock_token IS NULL OR lock_until < %(now)s) {where}
        AND NOT EXISTS (SELECT 1 FROM {s}.queues AS q WHERE q.name = c.queue AND q.paused)
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE {s}.jobs AS j SET status = 'running', attempts = j.attempts + 1,
    started_at = %(now)s, finished_at = NULL, owner = %(owner)s,
    lease_until = %(lease_until)s, lease_mono = %(lease_mono)s,
    deadline_mono = %(mono)s + j.max_runtime
FROM picked WHERE j.id = picked.id
RETURNING {j_columns}

-- A worker's completions and its next claim in one statement, committed on its own
-- (migrations/09_complete_and_claim.sql): the claimed rows, in no order.
-- name: complete_and_claim
SELECT {columns} FROM {s}.complete_and_claim(%s::bigint[], %s::bigint[], %s::text,
    %s::float8, %s::text[], %s::text, %s::float8, %s::float8, %s::float8, %s::bigint,
    %s::boolean)

-- name: in_one_queue
AND queue = %(queue)s

-- name: in_queues
AND queue = ANY(%(queues)s)

-- Queue names holding queued jobs, a seek each (a loose index scan of jobs_claim).
-- name: queued_queues
WITH RECURSIVE names(name) AS (
    (SELECT queue FROM {s}.jobs WHERE status = 'queued' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {s}.jobs
            WHERE status = 'queued' AND queue > names.name ORDER BY queue LIMIT 1)
    FROM names WHERE names.name IS NOT NULL)
SELECT name FROM names WHERE name IS NOT NULL

-- When a queue's next queued job is due: the first run_at of each priority, a seek each.
-- name: first_due
WITH RECURSIVE levels(priority) AS (
    (SELECT priority FROM {s}.jobs WHERE status = 'queued' AND queue = %(queue)s
     ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT priority FROM {s}.jobs
            WHERE status = 'queued' AND queue = %(queue)s AND priority < levels.priority
            ORDER BY priority DESC LIMIT 1)
    FROM levels WHERE levels.priority IS NOT NULL)
SELECT min((SELECT run_at FROM {s}.jobs
            WHERE status = 'queued' AND queue = %(queue)s AND priority = levels.priority
            ORDER BY run_at LIMIT 1))
FROM levels WHERE levels.priority IS NOT NULL

-- Counts read the counters (migrations/07_counts.sql): a counter row plus its changes
-- not yet folded, in one snapshot, never a scan of the jobs.
-- name: count
SELECT coalesce(sum(n), 0)::bigint FROM (
    SELECT queue, status, n FROM {s}.counts
    UNION ALL SELECT queue, status, n FROM {s}.count_changes) AS counted
WHERE true {where}

-- name: search
SELECT {columns} FROM {s}.jobs WHERE true {where} ORDER BY id {order} LIMIT %s

-- Jobs per queue and status from the counters; for queued jobs also what depends on the
-- time, through the claim index, a seek per priority of the queue: the first job of each
-- priority (due: since when it has waited; the oldest of them is what the overview shows)
-- and how many are due later (due = queued - later: the cost grows with the jobs
-- scheduled ahead, not with the due ones); and through jobs_erred, those waiting for a
-- worker that knows their type. Read with JIT off and in no order: with enable_sort off
-- (session_settings) a sort would look costly enough for the server to compile the
-- statement first (about 0.3 s), and the subqueries' estimates alone do for 30 ms.
-- name: summary
WITH totals AS (
    SELECT queue, status, sum(n)::bigint AS n FROM (
        SELECT queue, status, n FROM {s}.counts
        UNION ALL SELECT queue, status, n FROM {s}.count_changes) AS counted
    GROUP BY queue, status HAVING sum(n) <> 0)
SELECT t.queue, t.status, t.n, d.oldest, (t.n - coalesce(d.later, t.n))::bigint,
    coalesce(d.unknown, 0)
FROM totals AS t CROSS JOIN LATERAL (
    WITH RECURSIVE levels(priority) AS (
        (SELECT priority FROM {s}.jobs
         WHERE status = 'queued' AND queue = t.queue AND t.status = 'queued'
         ORDER BY priority DESC LIMIT 1)
        UNION ALL
        SELECT (SELECT priority FROM {s}.jobs
                WHERE status = 'queued' AND queue = t.queue AND priority < levels.priority
                ORDER BY priority DESC LIMIT 1)
        FROM levels WHERE levels.priority IS NOT NULL)
    SELECT
        min((SELECT CASE WHEN run_at <= %(now)s THEN greatest(run_at, created_at) END
             FROM {s}.jobs
             WHERE status = 'queued' AND queue = t.queue AND priority = levels.priority
             ORDER BY run_at LIMIT 1)) AS oldest,
        sum((SELECT count(*) FROM {s}.jobs
             WHERE status = 'queued' AND queue = t.queue AND priority = levels.priority
                 AND run_at > %(now)s)) AS later,
        (SELECT count(*) FROM {s}.jobs
         WHERE status = 'queued' AND error IS NOT NULL AND queue = t.queue
             AND t.status = 'queued' AND starts_with(error, %(waits)s)) AS unknown
    FROM levels WHERE levels.priority IS NOT NULL) AS d

-- The counters against a scan of the jobs (`liteq db check`): every (queue, status) whose
-- counter is not what a scan counts, with both numbers.
-- name: count_drift
WITH counted AS (
    SELECT queue, status, sum(n)::bigint AS n FROM (
        SELECT queue, status, n FROM {s}.counts
        UNION ALL SELECT queue, status, n FROM {s}.count_changes) AS parts
    GROUP BY queue, status),
scanned AS (SELECT queue, status, count(*) AS n FROM {s}.jobs GROUP BY queue, status)
SELECT queue, status, coalesce(c.n, 0), coalesce(s.n, 0)
FROM counted AS c FULL JOIN scanned AS s USING (queue, status)
WHERE coalesce(c.n, 0) <> coalesce(s.n, 0)

-- Set the counters from a scan, whoever writes meanwhile: the lock waits for writers
-- that are under way and holds new ones until the repair commits.
-- name: without_jit
SET LOCAL jit = off

-- name: lock_jobs_for_recount
LOCK TABLE {s}.jobs IN SHARE ROW EXCLUSIVE MODE

-- name: fold_counts
SELECT {s}.fold_counts(true)

-- name: clear_counts
DELETE FROM {s}.counts

-- name: recount
INSERT INTO {s}.counts (queue, status, n)
    SELECT queue, status, count(*) FROM {s}.jobs GROUP BY queue, status

-- name: purge
DELETE FROM {s}.jobs WHERE id IN (
    SELECT id FROM {s}.jobs WHERE status = %s {where} ORDER BY id LIMIT %s)

-- Periodic jobs' schedules (migrations/05_schedules.sql). A declaration keeps last_slot,
-- but for a spec or zone that changed: then it starts from now (never going back); an
-- advance moves it only forward, and returns a row only if it did. Two
-- hosts advancing one schedule at once: the second waits for the first's row lock, then
-- finds the WHERE false and changes nothing.
-- name: declare_schedule
INSERT INTO {s}.schedules (name, spec, tz, queue, last_slot, last_job, seen_at)
VALUES (%(name)s, %(spec)s, %(tz)s, %(queue)s, %(last_slot)s, NULL, %(seen_at)s)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, tz = excluded.tz,
    queue = excluded.queue, seen_at = excluded.seen_at,
    last_slot = CASE WHEN schedules.spec = excluded.spec AND schedules.tz = excluded.tz
        THEN schedules.last_slot ELSE greatest(schedules.last_slot, excluded.last_slot) END

-- name: advance_schedule
INSERT INTO {s}.schedules (name, spec, tz, queue, last_slot, last_job, seen_at)
VALUES (%(name)s, %(spec)s, %(tz)s, %(queue)s, %(last_slot)s, NULL, %(seen_at)s)
ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot, last_job = NULL
WHERE schedules.last_slot < excluded.last_slot
RETURNING name

-- name: schedule_job
UPDATE {s}.schedules SET last_job = %s WHERE name = %s

-- name: schedules
SELECT name, spec, tz, queue, last_slot, last_job, seen_at FROM {s}.schedules ORDER BY name

-- Dependencies (`after=`; migrations/06_results_and_dependencies.sql).
-- A job's dependencies, all in one statement: its after_ids and their done flags as two
-- arrays, each after_id once.
-- name: add_dependencies
INSERT INTO {s}.dependencies (job_id, after_id, done)
SELECT %s, t.after_id, t.done FROM unnest(%s::bigint[], %s::boolean[]) AS t(after_id, done)
ON CONFLICT (job_id, after_id) DO UPDATE SET done = excluded.done

-- name: dependencies
SELECT after_id, done FROM {s}.dependencies WHERE job_id = %s ORDER BY after_id

-- name: dependents
SELECT job_id FROM {s}.dependencies WHERE after_id = ANY(%s::bigint[]) AND NOT done

-- name: finish_dependencies
UPDATE {s}.dependencies SET done = true WHERE after_id = ANY(%s::bigint[]) AND NOT done
RETURNING job_id

-- Results that expired: deleted (cleared, for jobs kept whatever delete_on_complete said
-- not), a batch at a time; then dependencies whose job is gone.
-- name: expired_gone
DELETE FROM {s}.jobs WHERE id IN (
    SELECT id FROM {s}.jobs WHERE expires_at < %s AND status = 'completed'
        AND delete_on_complete LIMIT %s FOR UPDATE SKIP LOCKED)

-- name: expired_kept
UPDATE {s}.jobs SET result = NULL, expires_at = NULL WHERE id IN (
    SELECT id FROM {s}.jobs WHERE expires_at < %s AND status = 'completed'
        AND NOT delete_on_complete LIMIT %s FOR UPDATE SKIP LOCKED)

-- name: orphan_dependencies
DELETE FROM {s}.dependencies WHERE (job_id, after_id) IN (
    SELECT d.job_id, d.after_id FROM {s}.dependencies AS d
    WHERE NOT EXISTS (SELECT 1 FROM {s}.jobs WHERE id = d.job_id) LIMIT %s)

-- Queues, workers and their counts of finished jobs.
-- name: set_paused
INSERT INTO {s}.queues (name, paused) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused

-- name: paused
SELECT name FROM {s}.queues WHERE paused

-- name: register
INSERT INTO {s}.workers ({worker_columns}) VALUES ({worker_values})
ON CONFLICT (owner) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    queues = excluded.queues, started_at = excluded.started_at, beat_at = excluded.beat_at,
    lease = excluded.lease, jobs_done = excluded.jobs_done, current_job = excluded.current_job,
    rss = excluded.rss, in_flight = excluded.in_flight

-- name: beat
UPDATE {s}.workers SET beat_at = %s, jobs_done = %s, current_job = %s, rss = %s,
    in_flight = %s
WHERE owner = %s

-- name: count_finished
INSERT INTO {s}.stats AS t (minute, queue, completed, failed) VALUES (%s, %s, %s, %s)
ON CONFLICT (minute, queue) DO UPDATE
SET completed = t.completed + excluded.completed, failed = t.failed + excluded.failed

-- name: forget_old_stats
DELETE FROM {s}.stats WHERE minute < %s

-- name: forget_silent_workers
DELETE FROM {s}.workers WHERE beat_at + %s * lease < %s

-- name: unregister
DELETE FROM {s}.workers WHERE owner = %s

-- name: workers
SELECT {worker_columns} FROM {s}.workers

-- name: throughput
SELECT minute, queue, completed, failed FROM {s}.stats WHERE minute >= %s

-- name: count_total
INSERT INTO {s}.queues AS t (name, completed, failed) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE
SET completed = t.completed + excluded.completed, failed = t.failed + excluded.failed

-- name: totals
SELECT name, completed, failed FROM {s}.queues WHERE completed > 0 OR failed > 0

-- name: notify
SELECT pg_notify(%s, '')

-- Filters of count, search and purge, joined in the order given.
-- name: filter_queue
AND queue = %s

-- name: filter_status
AND status = %s

-- name: filter_type
AND job_type = %s

-- name: filter_error
AND strpos(error, %s) > 0

-- name: filter_finished_since
AND finished_at >= %s

-- name: filter_finished_before
AND finished_at < %s

-- name: filter_after
AND id > %s

-- name: filter_before
AND id < %s

-- Setting up and migrating the schema (schema.py).
-- name: tables
SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename

-- name: meta_version
SELECT version FROM {s}.meta

-- name: migration_lock
SELECT pg_advisory_xact_lock(hashtext(%s))

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {s}

-- name: create_meta
CREATE TABLE {s}.meta (one integer PRIMARY KEY CHECK (one = 1), version integer NOT NULL)

-- name: init_meta
INSERT INTO {s}.meta VALUES (1, 0)

-- name: set_version
UPDATE {s}.meta SET version = %s

-- Set on each of liteq's own connections. A queue's table swings from empty to a large
-- backlog faster than ANALYZE keeps up; with rows underestimated, the planner would claim by
-- reading every due job and sorting them, where the claim index yields them in order.
-- And a transaction of liteq's, all of whose statements follow each other at once, that
-- stays open for seconds belongs to a process that froze (stopped, in a debugger, swapped
-- out): the server ends it, so that the rows it locked do not stall every worker and
-- enqueue that needs them (unless the server, the role or the URL sets that timeout).
-- name: session_settings
SET enable_bitmapscan = off; SET enable_sort = off;
SELECT set_config('idle_in_transaction_session_timeout', '5s', false)
WHERE current_setting('idle_in_transaction_session_timeout') = '0'

-- The autoscaled pools of `liteq work` supervisors ({pool_columns}: PoolInfo's fields).
-- name: pools
SELECT {pool_columns} FROM {s}.pools

-- name: forget_pools
DELETE FROM {s}.pools WHERE supervisor = %s OR beat_at < %s

-- name: report_pool
INSERT INTO {s}.pools ({pool_columns}) VALUES ({pool_values})
