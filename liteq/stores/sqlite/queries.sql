-- The statements of SQLiteStore, by name (`-- name: NAME` starts a block). Python fills
-- in what is fixed by the schema ({columns}: every column of liteq_jobs, as Record lists
-- them; {new_columns}: each but the id, and {values}: a `?` for each of those;
-- {assignments}: `column = ?` for each but the id; {alike_…}: insert_alike's, below) or
-- by the call ({limit}, {names}, {pairs}, {where}, {order}: only from liteq's own code,
-- never from input); {claim_order} is the block of that name. schema.sql says why the
-- status tests are written as they are.
--
-- A value compared with an indexed column is bound as `+?`: this SQLite is built with
-- STAT4, and a plain `?` there makes it plan the statement again on every run; `+` keeps
-- the value out of the planner and the index is used all the same.

-- name: get
SELECT {columns} FROM liteq_jobs WHERE id = ?

-- name: coalesce_holder
SELECT {columns} FROM liteq_jobs WHERE coalesce_id = +? AND status <> 'completed'

-- name: active
SELECT {columns} FROM liteq_jobs WHERE status IN ('running', 'wait_async')

-- A new id: above every id there is and every id there was (schema.sql, liteq_meta).
-- name: next_id
SELECT max(coalesce((SELECT max(id) FROM liteq_jobs), 0), high_water) + 1 FROM liteq_meta

-- name: insert
INSERT INTO liteq_jobs (id, {new_columns}) VALUES (
    (SELECT max(coalesce((SELECT max(id) FROM liteq_jobs), 0), high_water) + 1 FROM liteq_meta),
    {values})

-- A held coalesce id makes it insert nothing (then changes() is 0). No RETURNING: it costs
-- more than asking for the new rowid.
-- name: insert_or_nothing
INSERT INTO liteq_jobs (id, {new_columns}) VALUES (
    (SELECT max(coalesce((SELECT max(id) FROM liteq_jobs), 0), high_water) + 1 FROM liteq_meta),
    {values})
ON CONFLICT DO NOTHING

-- Many new jobs alike (the same in every column but id, job_type and payload), in one
-- statement: their (type, payload) pairs go in as one JSON array ({alike_rows}), which
-- SQLite walks in C. Each other column is bound from the first job: {alike_values}, in
-- the order of {alike_columns}. Their ids run on from {alike_id}, the next id, read first: a
-- SELECT that read liteq_jobs itself would make SQLite copy every row aside before
-- inserting any.
-- name: insert_alike
INSERT INTO liteq_jobs (id, job_type, payload, {alike_columns})
SELECT {alike_id} + key, value ->> 0, value ->> 1, {alike_values}
FROM json_each({alike_rows})

-- The same when they are all of one type, {alike_type} (most batches): {alike_rows} is an
-- array of payloads.
-- name: insert_alike_of_type
INSERT INTO liteq_jobs (id, job_type, payload, {alike_columns})
SELECT {alike_id} + key, {alike_type}, value, {alike_values}
FROM json_each({alike_rows})

-- The same, with the payloads bound as an array of texts (SQLite's carray, where apsw
-- has it): no JSON to build, nor to read back. Its rowids count from 1.
-- name: insert_alike_array
INSERT INTO liteq_jobs (id, job_type, payload, {alike_columns})
SELECT {alike_id} + rowid - 1, {alike_type}, value, {alike_values}
FROM carray({alike_rows})

-- name: update
UPDATE liteq_jobs SET {assignments} WHERE id = ?

-- name: delete
DELETE FROM liteq_jobs WHERE id = ?

-- Fenced: only while the row is still the claimed run (id, owner, attempt).
-- name: delete_fenced
DELETE FROM liteq_jobs WHERE id = ? AND owner = ? AND attempts = ? AND status = 'running'

-- name: update_fenced
UPDATE liteq_jobs SET {assignments}
WHERE id = ? AND owner = ? AND attempts = ? AND status = 'running'

-- A change of a job's counter (schema.sql: liteq_counts) by the update that follows in the
-- same transaction, counted from the row as it is: nothing for a job of the tail, or for
-- one whose counter stays. ?1 the id; ?2 and ?3 the new queue and status (NULL: as they
-- are). {fence} is the update's: update_fenced's adds ?4 owner, ?5 attempts.
-- name: count_change
WITH changed (queue, counter, new_queue, new_counter) AS (
    SELECT queue, {counted_status}, coalesce(?2, queue),
        coalesce(iif(?3 = 'running', 'queued', ?3), {counted_status})
    FROM liteq_jobs WHERE id = ?1 {fence} AND id <= (SELECT counted_to FROM liteq_meta))
INSERT INTO liteq_counts (queue, status, n)
    SELECT queue, counter, -1 FROM changed WHERE (queue, counter) <> (new_queue, new_counter)
    UNION ALL
    SELECT new_queue, new_counter, 1 FROM changed WHERE (queue, counter) <> (new_queue, new_counter)
    ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n

-- name: fence
AND owner = ?4 AND attempts = ?5 AND status = 'running'

-- One owner's runs, each (id, attempts) of {pairs}, at once.
-- name: delete_fenced_many
DELETE FROM liteq_jobs WHERE (id, attempts) IN (VALUES {pairs})
    AND owner = ? AND status = 'running'
RETURNING id

-- What a claim writes (contract.start_run) on the rows it picked. Picked, then written:
-- inside BEGIN IMMEDIATE nothing can come between. (UPDATE … RETURNING would do both, but
-- SQLite fills a temporary table with what RETURNING returns.) ?1 now, ?2 owner,
-- ?3 lease_until, ?4 lease_mono, ?5 this host's monotonic clock, ?6 the id.
-- name: start_one
UPDATE liteq_jobs SET status = 'running', attempts = attempts + 1, started_at = ?1,
    finished_at = NULL, owner = ?2, lease_until = ?3, lease_mono = ?4,
    deadline_mono = ?5 + max_runtime
WHERE id = ?6

-- The same for many rows: ?6 is a JSON array of their ids.
-- name: start_many
UPDATE liteq_jobs SET status = 'running', attempts = attempts + 1, started_at = ?1,
    finished_at = NULL, owner = ?2, lease_until = ?3, lease_mono = ?4,
    deadline_mono = ?5 + max_runtime
WHERE id IN (SELECT value FROM json_each(?6))

-- The claim order, written here once for SQLite (contract: Tx.claim): highest priority
-- first, then the earliest run_at, then the lowest id (FIFO). The claim index, liteq_jobs_claim
-- (schema.sql), is (queue, then this order). The blocks below take it as {claim_order}.
-- name: claim_order
priority DESC, run_at, id

-- Picking the best {limit} due jobs. ?1 is now; ?2… the queue names. The claim index is
-- per queue: for one queue this is a plain seek.
-- name: pick_in_queue
SELECT {columns} FROM liteq_jobs
WHERE status = 'queued' AND queue = +?2 AND run_at <= ?1 AND (lock_token IS NULL OR lock_until < ?1)
    AND NOT EXISTS (SELECT 1 FROM liteq_queues WHERE name = ?2 AND paused)
ORDER BY {claim_order} LIMIT {limit}

-- Every queue, while a single queue holds queued jobs (most often): two more seeks check
-- that, and the statement selects nothing otherwise.
-- name: pick_in_only_queue
SELECT {columns} FROM liteq_jobs
WHERE status = 'queued'
    AND queue = (SELECT min(queue) FROM liteq_jobs WHERE status = 'queued')
    AND run_at <= ?1 AND (lock_token IS NULL OR lock_until < ?1)
    AND (SELECT min(queue) FROM liteq_jobs WHERE status = 'queued')
        = (SELECT max(queue) FROM liteq_jobs WHERE status = 'queued')
    AND NOT EXISTS (SELECT 1 FROM liteq_queues WHERE name = liteq_jobs.queue AND paused)
ORDER BY {claim_order} LIMIT {limit}

-- Several queues: the best {limit} of each, then the best of those (about twice the cost).
-- {names} is the table of queue names: `queue_names` (every queue holding queued jobs,
-- a seek each) or `VALUES (?2), (?3), …`.
-- name: pick_in_queues
{names} SELECT {c_columns} FROM names, liteq_jobs AS c
WHERE NOT EXISTS (SELECT 1 FROM liteq_queues AS q WHERE q.name = names.name AND q.paused)
AND c.id IN (
    SELECT id FROM liteq_jobs WHERE status = 'queued' AND queue = names.name
        AND run_at <= ?1 AND (lock_token IS NULL OR lock_until < ?1)
    ORDER BY {claim_order} LIMIT {limit})
ORDER BY {claim_order} LIMIT {limit}

-- name: queue_names
WITH RECURSIVE names(name) AS (
    SELECT min(queue) FROM liteq_jobs WHERE status = 'queued'
    UNION ALL
    SELECT (SELECT min(queue) FROM liteq_jobs WHERE status = 'queued' AND queue > name)
    FROM names WHERE name IS NOT NULL)

-- The names of every queue holding queued jobs.
-- name: queued_queues
{names} SELECT name FROM names WHERE name IS NOT NULL

-- name: listed_names
WITH names(name) AS (VALUES {names})

-- When the next queued job of a queue is due: per priority, a seek each.
-- name: top_priority
SELECT max(priority) FROM liteq_jobs WHERE status = 'queued' AND queue = +?1

-- name: next_priority
SELECT max(priority) FROM liteq_jobs WHERE status = 'queued' AND queue = +?1 AND priority < +?2

-- name: first_due
SELECT min(run_at) FROM liteq_jobs WHERE status = 'queued' AND queue = +?1 AND priority = +?2

-- Counts read liteq_job_counts (schema.sql), never a scan of the jobs: the counters, and
-- the tail of jobs not yet folded into them.
-- name: count
SELECT coalesce(sum(n), 0) FROM liteq_job_counts WHERE 1 {where}

-- name: search
SELECT {columns} FROM liteq_jobs WHERE 1 {where} ORDER BY id {order} LIMIT ?

-- Jobs per queue and status, from the counters.
-- name: summary
SELECT queue, status, n FROM liteq_job_counts WHERE n <> 0 ORDER BY queue, status

-- What depends on the time, for one queue's queued jobs (?1 the queue, ?2 now, ?3 the
-- prefix of an unknown type's error), through the claim index, a seek per priority: the
-- first job of each priority (due: since when it has waited; the oldest of them is what
-- the overview shows) and how many are due later (due = queued - later: the cost grows
-- with the jobs scheduled ahead, not with the due ones); and through liteq_jobs_erred,
-- those waiting for a worker that knows their type.
-- name: queued_detail
WITH RECURSIVE levels(priority) AS (
    SELECT max(priority) FROM liteq_jobs WHERE status = 'queued' AND queue = ?1
    UNION ALL
    SELECT (SELECT max(priority) FROM liteq_jobs
            WHERE status = 'queued' AND queue = ?1 AND priority < levels.priority)
    FROM levels WHERE levels.priority IS NOT NULL)
SELECT
    min((SELECT CASE WHEN run_at <= ?2 THEN max(run_at, created_at) END FROM liteq_jobs
         WHERE status = 'queued' AND queue = ?1 AND priority = levels.priority
         ORDER BY run_at LIMIT 1)),
    total((SELECT count(*) FROM liteq_jobs
           WHERE status = 'queued' AND queue = ?1 AND priority = levels.priority
               AND run_at > ?2)),
    (SELECT count(*) FROM liteq_jobs
     WHERE status = 'queued' AND error IS NOT NULL AND queue = ?1
         AND substr(error, 1, length(?3)) = ?3)
FROM levels WHERE levels.priority IS NOT NULL

-- The status a job is counted under in liteq_counts (schema.sql): a running one under
-- 'queued'. The blocks that fill the counters take it as {counted_status}.
-- name: counted_status
iif(status = 'running', 'queued', status)

-- The counters against a scan of the jobs (`liteq db check`): every (queue, status) whose
-- counter is not what a scan counts, with both numbers.
-- name: count_drift
WITH scanned AS (SELECT queue, status, count(*) AS n FROM liteq_jobs GROUP BY queue, status)
SELECT queue, status, coalesce(c.n, 0), coalesce(s.n, 0)
FROM liteq_job_counts AS c FULL JOIN scanned AS s USING (queue, status)
WHERE coalesce(c.n, 0) <> coalesce(s.n, 0)
ORDER BY queue, status

-- name: clear_counts
DELETE FROM liteq_counts

-- Every job there is counted from here on (after clear_counts: recount counts them).
-- name: mark_counted
UPDATE liteq_meta SET counted_to = max(counted_to, coalesce((SELECT max(id) FROM liteq_jobs), 0))

-- name: recount
INSERT INTO liteq_counts (queue, status, n)
    SELECT queue, {counted_status}, count(*) FROM liteq_jobs GROUP BY 1, 2

-- A batch of new jobs alike, all of one queue and status, counted as it is inserted
-- (?1 queue, ?2 status, ?3 how many, ?4 its first id; then counted_to, its last): the
-- tail before it folded in, then the batch added by its size, not read back.
-- name: count_batch
INSERT INTO liteq_counts (queue, status, n)
    SELECT queue, {counted_status}, count(*) FROM liteq_jobs
    WHERE id > (SELECT counted_to FROM liteq_meta) AND id < ?4 GROUP BY 1, 2
    UNION ALL SELECT ?1, iif(?2 = 'running', 'queued', ?2), ?3
    ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n

-- name: counted_to
UPDATE liteq_meta SET counted_to = ?1 WHERE one = 1 AND counted_to < ?1

-- The tail of jobs not yet counted, into the counters (then mark_counted): a few hundred
-- rows read by id, once in so many new ids (transaction.py, FOLD_EVERY).
-- name: fold_counts
INSERT INTO liteq_counts (queue, status, n)
    SELECT queue, {counted_status}, count(*) FROM liteq_jobs
    WHERE id > (SELECT counted_to FROM liteq_meta) GROUP BY 1, 2
    ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n

-- name: purge
DELETE FROM liteq_jobs WHERE id IN (
    SELECT id FROM liteq_jobs WHERE status = ? {where} ORDER BY id LIMIT ?)

-- What has changed since: another connection's commit moves it.
-- name: data_version
PRAGMA data_version

-- name: wal_checkpoint
PRAGMA wal_checkpoint(PASSIVE)

-- name: empty_wal
PRAGMA wal_checkpoint(TRUNCATE)

-- Upkeep of the file: rewrite it compactly, or with another page size (which only a
-- rollback journal allows).
-- name: vacuum
VACUUM

-- name: rollback_journal
PRAGMA journal_mode = DELETE

-- name: wal_journal
PRAGMA journal_mode = WAL

-- name: page_size
PRAGMA page_size

-- name: user_version
PRAGMA user_version

-- name: tables
SELECT name FROM sqlite_master
WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite^_%' ESCAPE '^' ORDER BY name

-- Periodic jobs' schedules (schema.sql: liteq_schedules). A declaration keeps last_slot,
-- but for a spec or zone that changed: then it starts from now (never going back); an
-- advance moves it only forward, and changes() says whether it did. (The right-hand sides
-- of SET read the row as it was.)
-- name: declare_schedule
INSERT INTO liteq_schedules (name, spec, tz, queue, last_slot, last_job, seen_at)
VALUES (:name, :spec, :tz, :queue, :last_slot, NULL, :seen_at)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, tz = excluded.tz,
    queue = excluded.queue, seen_at = excluded.seen_at,
    last_slot = CASE WHEN spec = excluded.spec AND tz = excluded.tz THEN last_slot
        ELSE max(last_slot, excluded.last_slot) END

-- name: advance_schedule
INSERT INTO liteq_schedules (name, spec, tz, queue, last_slot, last_job, seen_at)
VALUES (:name, :spec, :tz, :queue, :last_slot, NULL, :seen_at)
ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot, last_job = NULL
WHERE last_slot < excluded.last_slot

-- name: schedule_job
UPDATE liteq_schedules SET last_job = ? WHERE name = ?

-- name: schedules
SELECT name, spec, tz, queue, last_slot, last_job, seen_at FROM liteq_schedules ORDER BY name

-- Dependencies (`after=`; schema.sql: liteq_dependencies).
-- name: add_dependency
INSERT INTO liteq_dependencies (job_id, after_id, done) VALUES (?, ?, ?)
ON CONFLICT (job_id, after_id) DO UPDATE SET done = excluded.done

-- name: dependencies
SELECT after_id, done FROM liteq_dependencies WHERE job_id = ? ORDER BY after_id

-- name: dependents
SELECT job_id FROM liteq_dependencies
WHERE after_id IN (SELECT value FROM json_each(?)) AND NOT done

-- name: finish_dependencies
UPDATE liteq_dependencies SET done = 1
WHERE after_id IN (SELECT value FROM json_each(?)) AND NOT done
RETURNING job_id

-- name: finish_dependencies_of_one
UPDATE liteq_dependencies SET done = 1 WHERE after_id = ? AND NOT done
RETURNING job_id

-- Results that expired: deleted (cleared, for jobs kept whatever delete_on_complete said
-- not), a batch at a time; then dependencies whose job is gone.
-- name: expired_gone
DELETE FROM liteq_jobs WHERE id IN (
    SELECT id FROM liteq_jobs WHERE expires_at < ? AND status = 'completed'
        AND delete_on_complete LIMIT ?)

-- name: expired_kept
UPDATE liteq_jobs SET result = NULL, expires_at = NULL WHERE id IN (
    SELECT id FROM liteq_jobs WHERE expires_at < ? AND status = 'completed'
        AND NOT delete_on_complete LIMIT ?)

-- name: orphan_dependencies
DELETE FROM liteq_dependencies WHERE (job_id, after_id) IN (
    SELECT d.job_id, d.after_id FROM liteq_dependencies AS d
    WHERE NOT EXISTS (SELECT 1 FROM liteq_jobs WHERE id = d.job_id) LIMIT ?)

-- Queues, workers and their counts of finished jobs.
-- name: set_paused
INSERT INTO liteq_queues (name, paused) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused

-- name: paused
SELECT name FROM liteq_queues WHERE paused

-- name: register
INSERT OR REPLACE INTO liteq_workers ({worker_columns}) VALUES ({worker_values})

-- name: beat
UPDATE liteq_workers SET beat_at = ?, jobs_done = ?, current_job = ?, rss = ?, in_flight = ?
WHERE owner = ?

-- name: count_finished
INSERT INTO liteq_stats (minute, queue, completed, failed) VALUES (?, ?, ?, ?)
ON CONFLICT (minute, queue) DO UPDATE
SET completed = completed + excluded.completed, failed = failed + excluded.failed

-- name: forget_old_stats
DELETE FROM liteq_stats WHERE minute < ?

-- name: forget_silent_workers
DELETE FROM liteq_workers WHERE beat_at + ? * lease < ?

-- name: unregister
DELETE FROM liteq_workers WHERE owner = ?

-- name: workers
SELECT {worker_columns} FROM liteq_workers

-- name: throughput
SELECT minute, queue, completed, failed FROM liteq_stats WHERE minute >= ?

-- name: count_total
INSERT INTO liteq_queues AS t (name, completed, failed) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE
SET completed = t.completed + excluded.completed, failed = t.failed + excluded.failed

-- name: totals
SELECT name, completed, failed FROM liteq_queues WHERE completed > 0 OR failed > 0

-- Filters of count, search and purge, joined in the order given.
-- name: filter_queue
AND queue = ?

-- name: filter_status
AND status = ?

-- name: filter_type
AND job_type = ?

-- name: filter_error
AND instr(error, ?) > 0

-- name: filter_finished_since
AND finished_at >= ?

-- name: filter_finished_before
AND finished_at < ?

-- name: filter_after
AND id > ?

-- name: filter_before
AND id < ?

-- The autoscaled pools of `liteq work` supervisors ({pool_columns}: PoolInfo's fields).
-- name: pools
SELECT {pool_columns} FROM liteq_pools

-- name: forget_pools
DELETE FROM liteq_pools WHERE supervisor = ? OR beat_at < ?

-- name: report_pool
INSERT INTO liteq_pools ({pool_columns}) VALUES ({pool_values})
