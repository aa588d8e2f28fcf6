"""BaseStore: the rules every store shares, built on its backend's primitives.

Options, the status machine, retries, mulligans, coalescing, locks and hooks live here
once, so every store behaves the same and runs the same contract suite. BaseStore is the
application's and the operator's sides; the worker's side (claims, leases,
acknowledgements) is its base class `Runs`, the status rules are in `transitions`, and it
holds its components: the `Announcer` (hooks), the `Waker` and the workers' `Registry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any, Unpack

from liteq.errors import (
    InvalidState,
    JobFailed,
    JobNotFound,
    LiteqError,
    ResultExpired,
    ResultNotReady,
)
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.options import INT64_MAX, EnqueueOptions, build_record, build_records, check_text
from liteq.periodic import Periodic, make_schedule, register
from liteq.record import WAITING, Record, evolve, held
from liteq.status import Status, check_transition
from liteq.stores import transitions
from liteq.stores.contract import (
    CountDrift,
    Decide,
    FileInfo,
    Finished,
    Hung,
    JobQuery,
    MinuteCount,
    PoolInfo,
    QueueCount,
    Store,
    Tx,
    WorkerInfo,
)
from liteq.stores.events import Announcer, Event, StatusHook, listens, listens_to
from liteq.stores.offload import Offload
from liteq.stores.registry import Registry
from liteq.stores.schedules import Schedules
from liteq.stores.wakeup import Waker
from liteq.task import Task

#: Rows a purge deletes per transaction: other writers get the file in between.
PURGE_BATCH = 1000

#: While `result` waits: how often it looks at the store's wake-up marker (a commit here,
#: or by another process: SQLite's data_version, PostgreSQL's notifications), and the
#: longest it goes without reading the job's row (a backstop: a job deleted on completion
#: sends no notification).
RESULT_POLL, RESULT_RECHECK = 0.05, 1.0

#: What _outcome says of a job that has not finished.
_PENDING: Any = object()

#: What `detect_hung_jobs` runs: which worker processes live, and stopping them, is the
#: workers' business, never a store's; liteq.worker.rescue installs its check as it loads
#: (`import liteq` loads it), so that no store imports the worker layer.
_hung_check: list[Callable[[Store], list[ManagedJob]]] = []


def install_hung_check(check: Callable[[Store], list[ManagedJob]]) -> None:
    """Make `check` what every store's detect_hung_jobs runs."""
    _hung_check[:] = [check]


def check_job_id(job_id: object) -> int:
    """`job_id` if it can name a job in every store: TypeError or ValueError otherwise."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise TypeError(f"a job id is an int, not {job_id!r}")
    if not 0 < job_id <= INT64_MAX:
        raise ValueError(f"job ids run from 1 to 2**63-1, not {job_id!r}")
    return job_id


class BaseStore(Schedules):
    """Shared semantics of every store. Subclasses implement the primitives, give their
    workers' registry, and override what their transport needs (see stores/contract.py)."""

    def __init__(
        self,
        *,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
        waker: Waker | None = None,
    ) -> None:
        self.on_status_change = on_status_change
        waker = waker or Waker()
        overridden = type(self).status_did_change is not BaseStore.status_did_change
        super().__init__(clock, Announcer(self, waker, overridden), waker, registry)
        self._offload = Offload(f"liteq-{type(self).__name__}")

    # -- hooks -------------------------------------------------------------
    def status_did_change(self, job: ManagedJob, old_status: Status, message: str | None) -> None:
        """Called after every status change; override in a subclass or pass `on_status_change`."""
        if self.on_status_change is not None:
            self.on_status_change(job, old_status, message)

    def _managed(self, record: Record, lock_token: str | None = None) -> ManagedJob:
        return self._announcer.managed(record, None, False, lock_token)

    # -- waking idle workers -------------------------------------------------
    def wait_for_jobs(self, queues: Sequence[str] | None, timeout: float) -> bool:
        """Block up to `timeout` seconds; return True early once the queue may have changed
        since this process's last claim (an enqueue here or a commit by another process)."""
        return self._waker.wait(timeout)

    def wake(self) -> None:
        """Make every wait_for_jobs in this process return now (Worker.stop uses it)."""
        self._waker.ring()

    # -- enqueue -----------------------------------------------------------
    def enqueue(self, job: Job, **options: Unpack[EnqueueOptions]) -> ManagedJob:
        """Enqueue a job and return its ManagedJob.

        With a coalesce_id that a queued, running, waiting or failed job holds, return
        that job and create nothing. Raises TypeError (unencodable state, bad option
        type) or ValueError (bad option value) before anything is written.

            mjob = store.enqueue(SendEmail("ann@example.com"), priority=5, delay=60)

        `after=[a, b]` (ManagedJobs or ids of this store): the job is not claimed until every
        one has completed; if one fails for good or is deleted, the job fails too. A job
        that coalesces onto an existing one keeps that one's dependencies.
        """
        if "after" in options:
            after = options.pop("after")
            record, events = self._new_record(job, options)
            return self._enqueue_after(record, job, events, after)
        record, events = self._new_record(job, options)
        if record.coalesce_id is None:  # nothing can conflict: a write of its own
            record.id = self._insert_one(record)
            return self._enqueued(record, job, events)
        with self._write() as w:
            new_id = w.tx.insert(record)
            if new_id is None:
                holder = self._holder(w.tx, record)
            else:
                record.id = new_id
                w.events.extend(events)
        if new_id is None:  # outside the transaction: other processes may write meanwhile
            return self._managed(holder)
        return ManagedJob(self, record, job, None)

    def _enqueue_after(
        self, record: Record, job: Job, events: list[Event], after: object
    ) -> ManagedJob:
        """Enqueue `record` to run after the jobs `after` names, in one transaction: it waits
        (held, see record.WAITING) for those not completed yet, and is FAILED at once if one
        has failed. JobNotFound (nothing written) for an id with no job, unless it was given
        as a ManagedJob: that job was, and its row went as it completed (or was deleted)."""
        if isinstance(after, ManagedJob | int | str | bytes) or not isinstance(after, Iterable):
            raise TypeError(f"after must be a list of ManagedJobs or job ids, not {after!r}")
        ids: dict[int, bool] = {}  # id -> given as a ManagedJob
        for dep in after:
            if isinstance(dep, ManagedJob):
                if dep.store is not self:
                    raise ValueError(f"after: job {dep.id} is in another store")
                ids[dep.id] = True
            else:
                ids.setdefault(check_job_id(dep), False)
        with self._write() as w:
            pending, failed = [], None
            found = w.tx.get_many(list(ids))
            for dep_id in sorted(ids):
                dep = found.get(dep_id)
                if dep is None:
                    if not ids[dep_id]:
                        raise JobNotFound(
                            f"after: no job with id {dep_id} (pass its ManagedJob if it has "
                            "completed and was deleted on completion)"
                        )
                elif dep.status is Status.FAILED:
                    failed = dep_id if failed is None else failed
                elif dep.status is not Status.COMPLETED:
                    pending.append(dep_id)
            if failed is not None:
                message = f"dependency {failed} failed"
                record = evolve(record, status=Status.FAILED, finished_at=w.tx.now, error=message)
            elif pending:
                record = evolve(record, run_at=held(record.run_at))
            new_id = w.tx.insert(record)
            if new_id is None:  # coalesced: the holder keeps its own dependencies
                holder = self._holder(w.tx, record)
            else:
                record.id = new_id
                w.tx.add_dependencies(new_id, [(d, d not in pending) for d in sorted(ids)])
                w.events.extend((record, old, said, j) for _, old, said, j in events)
        if new_id is None:
            return self._managed(holder)
        return ManagedJob(self, record, job, None)

    async def aenqueue(self, job: Job, **options: Unpack[EnqueueOptions]) -> ManagedJob:
        """Enqueue a job from async code: `enqueue`'s options, errors and coalescing.

        SQLite (apsw) and the memory store are synchronous: the write runs in a thread of
        the store's own (see stores/offload.py), so that the caller's event loop goes on
        while it waits for the file's write lock. A write is short, and the thread keeps
        the loop free even while SQLite waits on a lock another process holds.
        PostgresStore writes with psycopg's async connection instead. Cancelling the
        await does not undo an enqueue that has begun: the job may exist.

            @app.post("/signup")
            async def signup(email: str) -> dict[str, int]:
                mjob = await store.aenqueue(SendWelcome(email), delay=60)
                return {"job": mjob.id}
        """
        return await self._offload.call(lambda: self.enqueue(job, **options))

    def _new_record(self, job: Job, options: EnqueueOptions) -> tuple[Record, list[Event]]:
        """The row an enqueue of `job` inserts, and the status event its hooks are told once
        it is committed; raises TypeError or ValueError (nothing is written yet)."""
        record = build_record(job, options, self.clock())
        events: list[Event] = []
        if self._announcer.listening() or listens(job):
            events.append((record, Status.UNQUEUED, "enqueued", job))
        return record, events

    def _enqueued(self, record: Record, job: Job, events: list[Event]) -> ManagedJob:
        """A new job, committed with its id: wake the idle workers, run its hooks, and
        return its ManagedJob."""
        self._announcer.committed(events)
        return ManagedJob(self, record, job, None)

    def enqueue_many(
        self, jobs: Iterable[Job], **options: Unpack[EnqueueOptions]
    ) -> list[ManagedJob]:
        """Enqueue jobs in one transaction, each with these options; return their ManagedJobs."""
        jobs = list(jobs)
        records, alike = build_records(jobs, options, self.clock())
        if alike and len(records) > 1:
            # Nothing can conflict: one statement of its own, where the backend can.
            new = self._insert_alike_alone(records)
            if new is not None:
                self._announcer.committed(self._enqueued_events(records, jobs, new))
                return ManagedJob.enqueued(self, records, jobs)
        holders: dict[int, Record] = {}  # by position: the jobs that hold a coalesce id
        with self._write() as w:
            tx = w.tx
            if alike:  # (no coalesce id: every job is inserted)
                w.events.extend(self._enqueued_events(records, jobs, tx.insert_alike(records)))
            else:
                store_listens = self._announcer.listening()
                for i, new_id in enumerate(tx.insert_many(records)):
                    record = records[i]
                    if new_id is None:
                        holders[i] = self._holder(tx, record)
                        continue
                    record.id = new_id
                    if store_listens or listens(jobs[i]):
                        w.events.append((record, Status.UNQUEUED, "enqueued", jobs[i]))
        managed = ManagedJob.enqueued(self, records, jobs)
        for i, holder in holders.items():  # outside the transaction: others may write meanwhile
            managed[i] = self._managed(holder)
        return managed

    def _enqueued_events(
        self, records: Sequence[Record], jobs: Sequence[Job], ids: Sequence[int]
    ) -> list[Event]:
        """Give new rows their ids; return the status events of those whose hooks listen
        (the store's, or their class's: asked once per class)."""
        for record, job_id in zip(records, ids, strict=True):
            record.id = job_id
        if not self._announcer.listening():
            heard = {cls for cls in set(map(type, jobs)) if listens_to(cls)}
            if not heard:
                return []
            return [
                (r, Status.UNQUEUED, "enqueued", j)
                for r, j in zip(records, jobs, strict=True)
                if type(j) in heard
            ]
        return [(r, Status.UNQUEUED, "enqueued", j) for r, j in zip(records, jobs, strict=True)]

    @staticmethod
    def _holder(tx: Tx, record: Record) -> Record:
        """The job holding the coalesce id of `record`, which was therefore not inserted."""
        holder = tx.coalesce_holder(record.coalesce_id) if record.coalesce_id else None
        if holder is None:
            raise LiteqError(
                f"job {record.job_type} was not inserted and no job holds its coalesce id"
            )
        return holder

    def task(
        self, func: Callable[..., Any] | None = None, **options: Unpack[EnqueueOptions]
    ) -> Any:
        """Decorate a module-level function to make it a job type on this store.

        @store.task(queue="mail", max_attempts=3)
        def send_email(to: str) -> None: ...

        send_email.enqueue("ann@example.com")
        """
        if func is not None:
            return self._task(func, options)
        return lambda f: self._task(f, options)

    #: Whether only this process runs this store's jobs (MemoryStore): then a task may
    #: live in `__main__`, which no other process can import.
    in_process = False

    def _task(self, func: Callable[..., Any], options: EnqueueOptions) -> Task[Any, Any]:
        if func.__module__ == "__main__" and not self.in_process:
            raise TypeError(
                f"@task on {func.__qualname__}, defined in the script being run (__main__): "
                "no worker process can import that; define the task in a module and import "
                "it (liteq work --import that module)"
            )
        return Task(self, func, options)

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | timedelta | None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        max_runtime: float | None = None,
        tz: str = "UTC",
        catch_up: int = 1,
    ) -> Callable[[Any], Periodic]:
        """Run a module-level function (or a Job instance) on a schedule: a cron string
        (five fields; needs the `cron` extra) or `every` seconds (or a timedelta).

            @store.periodic("0 3 * * *", tz="Europe/Berlin")
            def nightly_report(scheduled_at: datetime) -> None: ...

            store.periodic(every=300, name="sync")(Sync(full=False))

        Each slot's job is an ordinary job, enqueued once per (name, slot) by whichever
        worker (`liteq work --import` of this module) finds it due first. `name`: the
        schedule's (default: the function's dotted name). `tz`: the IANA zone the cron
        string's wall clock is in (default UTC). `catch_up`: how many of the slots missed
        while no worker ran are run (default 1, the latest; 0 skips them). A function with
        a `scheduled_at` parameter is given its slot's time, an aware datetime in `tz`.
        A bad cron string or zone, or a name used by another schedule, raise here (at
        import); see docs/concepts.md for DST and catch-up.
        """
        schedule = make_schedule(cron, every, tz)
        options: EnqueueOptions = {}
        for key, value in (
            ("queue", queue),
            ("priority", priority),
            ("max_attempts", max_attempts),
            ("max_runtime", max_runtime),
        ):
            if value is not None:
                options[key] = value  # type: ignore[literal-required]  # (keys: EnqueueOptions')

        def decorate(target: Any) -> Periodic:
            if getattr(target, "__module__", None) == "__main__" and not self.in_process:
                raise TypeError(
                    f"@periodic on {getattr(target, '__qualname__', target)!r}, defined in the "
                    "script being run (__main__): no worker process can import that; define "
                    "it in a module and import it (liteq work --import that module)"
                )
            return register(
                Periodic(self, target, schedule, name=name, catch_up=catch_up, options=options)
            )

        return decorate

    # -- reading -----------------------------------------------------------
    def get(self, job_id: int) -> ManagedJob:
        """Return the job with this id, or raise JobNotFound (works for undecodable rows too)."""
        return self._found(job_id, self._read(check_job_id(job_id)))

    async def aget(self, job_id: int) -> ManagedJob:
        """`get` from async code: the read runs in the store's own thread, as aenqueue's
        write does (PostgresStore reads with its async connection)."""
        check_job_id(job_id)
        return await self._offload.call(lambda: self.get(job_id))

    def _found(self, job_id: int, record: Record | None) -> ManagedJob:
        """The ManagedJob of the row read for `job_id`; JobNotFound if there was none."""
        if record is None:
            raise JobNotFound(f"no job with id {job_id}")
        return self._managed(record)

    # -- results and dependencies ------------------------------------------------
    def result(self, job_id: int, timeout: float | None = None) -> Any:
        """The result of job `job_id` (what its run returned, kept with keep_result),
        waiting up to `timeout` seconds for it to finish (None: not at all).

        Raises ResultNotReady if it has not finished (in time), JobFailed (with the job's
        id and error) if it failed for good, ResultExpired if the result is gone: it
        expired, the job was deleted, or it completed without keep_result.

            mjob = store.enqueue(Report(42), keep_result=True)
            url = store.result(mjob.id, timeout=30)
        """
        check_job_id(job_id)
        deadline = _deadline(timeout)
        if deadline is None:  # no wait: the read alone (no mark, which may open more)
            return result_of(job_id, self._read(job_id), self.clock())
        while True:
            mark = self._result_mark()  # (before the read: a commit after it moves it)
            outcome = _outcome(job_id, self._read(job_id), self.clock())
            if outcome is not _PENDING:
                return outcome
            left = _left(job_id, deadline)
            recheck = time.monotonic() + min(left, RESULT_RECHECK)
            while self._result_mark() == mark and (pause := recheck - time.monotonic()) > 0:
                time.sleep(min(pause, RESULT_POLL))

    async def aresult(self, job_id: int, timeout: float | None = None) -> Any:
        """`result` from async code: the caller's event loop goes on while it waits (reads
        run in the store's own thread, as aget's; PostgresStore reads with its async
        connection).

            value = await mjob.aresult(timeout=30)
        """
        check_job_id(job_id)
        deadline = _deadline(timeout)
        while True:
            mark = await self._aresult_mark()
            outcome = _outcome(job_id, await self._aread(job_id), self.clock())
            if outcome is not _PENDING:
                return outcome
            left = _left(job_id, deadline)
            recheck = time.monotonic() + min(left, RESULT_RECHECK)
            while (pause := recheck - time.monotonic()) > 0:
                await asyncio.sleep(min(pause, RESULT_POLL))
                if await self._aresult_mark() != mark:
                    break

    def _result_mark(self) -> object:
        """What changes when a job may have finished (see Waker.mark)."""
        return self._waker.mark()

    async def _aresult_mark(self) -> object:
        return await self._offload.call(self._result_mark)

    async def _aread(self, job_id: int) -> Record | None:
        return await self._offload.call(lambda: self._read(job_id))

    def dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        """What job `job_id` runs after (`after=`): (id, whether it has completed), by id."""
        return self._dependencies(check_job_id(job_id))

    def dependency_results(self, job_id: int) -> dict[int, Any]:
        """The results of job `job_id`'s dependencies that kept one (keep_result) and
        still have it, by id: what a dependent job's run reads.

            def run(self, job):
                (report,) = job.dependency_results().values()
        """
        results = {}
        now = self.clock()
        for after_id, _ in self.dependencies(job_id):
            record = self._read(after_id)
            if record is not None and _kept(record, now):
                results[after_id] = json.loads(record.result or "null")
        return results

    def get_by_coalesce_id(self, coalesce_id: str) -> ManagedJob | None:
        """Return the job holding this coalesce id, or None."""
        record = self._read_coalesce(check_text(coalesce_id, "coalesce_id"))
        return None if record is None else self._managed(record)

    def count(self, queue: str | None = None, status: Status | None = None) -> int:
        """Count jobs, over every status and queue unless one is given."""
        if queue is not None:
            check_text(queue, "queue")
        return self._count(queue, None if status is None else Status(status))

    def jobs(self, queue: str | None = None, status: Status | None = None) -> Iterator[ManagedJob]:
        """Iterate jobs oldest first, streamed in pages (never the whole queue in memory)."""
        status = None if status is None else Status(status)
        after = 0
        while True:
            page = self.search(JobQuery(queue=queue, status=status, after=after, limit=500))
            yield from page
            if len(page) < 500:
                return
            after = page[-1].id

    def search(self, query: JobQuery) -> list[ManagedJob]:
        """A page of jobs matching `query` (see JobQuery)."""
        for text, name in ((query.queue, "queue"), (query.job_type, "job type")):
            if text is not None:
                check_text(text, name)
        return [self._managed(record) for record in self._search(query)]

    def summary(self) -> list[QueueCount]:
        """How many jobs each queue holds by status, and its oldest due job, in one read."""
        return self._summary(self.clock())

    def purge(
        self,
        status: Status,
        *,
        queue: str | None = None,
        before: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete the COMPLETED or FAILED jobs (of this queue) that finished before
        `before` (epoch seconds; None: all); return how many. In batches, other writers
        getting the file in between; `progress` is told the count after each."""
        status = Status(status)
        if status not in (Status.COMPLETED, Status.FAILED):
            raise ValueError(f"purge deletes completed or failed jobs, not {status.value}")
        if queue is not None:
            check_text(queue, "queue")
        deleted = 0
        while True:
            gone = self._purge(status, queue, before, PURGE_BATCH)
            deleted += gone
            if progress is not None:
                progress(deleted)
            if gone < PURGE_BATCH:
                return deleted

    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None:
        """Epoch seconds when the next queued job in these queues is due, or None (a time
        in the past, or DUE_AT_ONCE, for a job due now)."""
        due = self._next_run_at(queues)
        return None if due is None or due >= WAITING - 2 else due  # (only waiting jobs)

    def active(self) -> list[Record]:
        """Every RUNNING or WAIT_ASYNC row: what the hung-job check looks at."""
        return self._read_active()

    # -- changes by users ----------------------------------------------------
    def delete(self, job: int | ManagedJob) -> None:
        """Delete a job (by id, or a ManagedJob); raise JobNotFound if missing, JobLocked if
        another holder locked it. A worker still running it finds it gone and logs that."""
        token = job.lock_token if isinstance(job, ManagedJob) else None
        job_id = check_job_id(job.id if isinstance(job, ManagedJob) else job)
        with self._write() as w:
            transitions.current(w, job_id, token)
            transitions.fail_dependents(w, job_id, "was deleted")
            w.tx.delete(job_id)

    def retry(self, mjob: ManagedJob, *, mulligan: bool = False) -> bool:
        """mjob.retry(): see ManagedJob.retry."""
        with self._write() as w:
            rec = w.tx.get(mjob.id)
            if rec is None:
                raise JobNotFound(f"no job with id {mjob.id}")
            own = transitions.owns(rec, mjob.record, mjob.claimed)
            if rec.status is Status.RUNNING and not own:
                raise InvalidState(
                    f"job {rec.id} is running in {rec.owner}; only that worker may retry it"
                )
            if not own:  # the running worker's own hand-back ignores locks
                transitions.unlocked(rec, mjob.lock_token, w.tx.now)
            if rec.status is Status.FAILED and rec.attempts >= rec.max_attempts and not mulligan:
                return False
            check_transition(rec.id, rec.status, Status.QUEUED)
            # An operator's retry of a failed job forgives its worker deaths: one that
            # failed for crashing has had its cause mended, or is meant to try again.
            forgiven = {"crashes": 0} if rec.status is Status.FAILED else {}
            requeued = transitions.requeue_or_fail(
                w,
                rec,
                mulligan=mulligan,
                delay=0.0,
                job=mjob.job,
                message="retried with a mulligan" if mulligan else "retried",
                **forgiven,
            )
            if requeued.status is Status.QUEUED and not own:  # (a job that never ran waits)
                requeued = transitions.wait_again(w, requeued)
        mjob.replace_record(requeued)
        return requeued.status is Status.QUEUED

    def restart(self, mjob: ManagedJob) -> None:
        """mjob.restart(): see ManagedJob.restart."""
        with self._write() as w:
            rec = transitions.current(w, mjob.id, mjob.lock_token)
            if rec.status is Status.RUNNING:
                raise InvalidState(
                    f"job {rec.id} is running in {rec.owner}; restarting it would run "
                    "it twice at once: stop its worker or wait for it"
                )
            fresh = transitions.restarted(rec, w.tx.now)
            fresh = transitions.apply(w, rec.status, fresh, "restarted", mjob.job)
            mjob.replace_record(transitions.wait_again(w, fresh))

    @contextlib.contextmanager
    def locked(self, job_id: int, lease: float = 60.0) -> Iterator[ManagedJob]:
        """Hold the job's mutex for the block and yield the job.

        Raises JobLocked if another holder has it, JobNotFound if there is no such job.
        While held, workers do not claim the job and other holders cannot change it.
        The lock is released on leaving the block, whatever happens; a holder that dies
        loses it after `lease` seconds.

            with store.locked(job_id) as mjob:
                mjob.retry()
        """
        check_job_id(job_id)
        token = secrets.token_hex(8)
        with self._write() as w:
            rec = transitions.current(w, job_id, None)
            rec = evolve(rec, lock_token=token, lock_until=w.tx.now + lease)
            w.tx.update(rec)
        try:
            yield self._managed(rec, lock_token=token)
        finally:
            with self._write() as w:
                current = w.tx.get(job_id)
                if current is not None and current.lock_token == token:
                    w.tx.update(evolve(current, lock_token=None, lock_until=None))

    # -- hung jobs ---------------------------------------------------------
    def detect_hung_jobs(self) -> list[ManagedJob]:
        """Re-queue with a mulligan every hung job; return them.

        Hung: RUNNING or WAIT_ASYNC past max_runtime, or RUNNING with an expired lease or
        a worker process that is gone from this host. A hung job whose worker is still
        alive on this host is stopped (SIGKILL) first, so it never runs twice at once;
        one whose worker is alive on another host is left to that worker until its
        lease expires.
        """
        if not _hung_check:
            raise LiteqError("no check of hung jobs is installed: import liteq.worker.rescue")
        return _hung_check[0](self)

    def rescue(self, seen: Record, decide: Decide) -> ManagedJob | None:
        """Re-queue with a mulligan a job found hung in `seen`, if it still is.

        In one write transaction: the row is read again (no other writer can change it
        meanwhile), `decide(row, now, monotonic now)` says why it is hung or None (and
        may stop its worker first), and the outcome is written. None if the job moved on
        since `seen` or `decide` said no. A `Hung` verdict with a `death` counts a crash:
        at its `max_crashes` the job fails for good instead.
        """
        with self._write() as w:
            current = w.tx.get(seen.id)
            if current is None or (current.status, current.owner, current.attempts) != (
                seen.status,
                seen.owner,
                seen.attempts,
            ):
                return None
            verdict = decide(current, w.tx.now, w.tx.mono)
            if verdict is None:
                return None
            hung = verdict if isinstance(verdict, Hung) else Hung(verdict)
            died = hung.death is not None and current.status is Status.RUNNING
            if died:
                death = hung.death or ""
                # (not "hung": the worker died; the reason says how, or that it was killed)
                updated = transitions.crashed(w, current, death, hung.max_crashes, hung.reason)
            else:
                updated = transitions.requeue_or_fail(
                    w,
                    current,
                    mulligan=True,
                    delay=0.0,
                    job=None,
                    message=f"hung: {hung.reason}",
                    error=f"hung: {hung.reason}",
                )
        if died:  # an attempt that failed, as a worker counts those it sees fail
            self._registry.count_outside_worker(updated.queue, completed=0, failed=1)
        return self._managed(updated)

    # -- queues and workers ----------------------------------------------------
    def pause(self, queue: str) -> None:
        """Pause a queue: it accepts jobs, and workers claim none from it until resume()."""
        self._set_paused(check_text(queue, "queue"), True)
        self._waker.ring()

    def resume(self, queue: str) -> None:
        """Let workers claim jobs from a paused queue again."""
        self._set_paused(check_text(queue, "queue"), False)
        self._waker.ring()

    def paused(self) -> set[str]:
        """The paused queues."""
        return self._paused()

    # -- the workers' registry (see registry.Registry for its rules) ---------------
    def register_worker(self, info: WorkerInfo) -> None:
        """Record a worker that starts (it beats while it runs, and unregisters when done)."""
        self._registry.register(info)

    def beat(
        self,
        owner: str,
        *,
        jobs_done: int,
        current_job: int | None,
        finished: Finished,
        rss: int | None = None,
        in_flight: int = 0,
    ) -> None:
        """A worker is alive: its count of jobs, the job it runs now, the jobs it finished
        since its last beat, per queue (completed, failed), the memory it uses, and how
        many jobs it has in flight."""
        self._registry.beat(
            owner,
            jobs_done=jobs_done,
            current_job=current_job,
            finished=finished,
            rss=rss,
            in_flight=in_flight,
        )

    def unregister_worker(self, owner: str) -> None:
        """Forget a worker that stops."""
        self._registry.unregister(owner)

    def workers(self) -> list[WorkerInfo]:
        """The registered workers that beat within their lease, oldest first."""
        return self._registry.workers()

    def finished(self, since: float) -> Finished:
        """Per queue, the jobs completed and the attempts that failed since `since` (epoch
        seconds; counted by the minute, kept a day): what workers told at their beats, and
        jobs resolved by resolve_wait_async as they were resolved."""
        return self._registry.finished(since)

    def throughput(self, since: float) -> list[MinuteCount]:
        """What finished in each minute since `since` (kept a day; counted as `finished`
        says), by minute; a minute in which nothing finished has no row."""
        return self._registry.throughput(since)

    def totals(self) -> Finished:
        """Per queue, every job completed and every attempt that failed since the queue was
        made (Prometheus counters; counted as `finished` says)."""
        return self._registry.totals()

    def report_pools(self, supervisor: str, pools: Sequence[PoolInfo]) -> None:
        """`liteq work --autoscale`: a supervisor's pools now, in place of its last report
        (none: it stops)."""
        self._registry.report_pools(supervisor, pools)

    def pools(self) -> list[PoolInfo]:
        """The autoscaled pools of the supervisors that reported lately (registry.POOL_LEASE)."""
        return self._registry.pools()

    # -- the store itself ------------------------------------------------------
    def check_health(self) -> list[str]:
        """Conditions an operator should hear of (a growing WAL file, say), each in a
        sentence, new since the last call; workers and `liteq work` log them."""
        return []

    def check_counts(self, *, repair: bool = False) -> list[CountDrift]:
        """The kept counts of jobs per queue and status (what count(), summary() and the
        overview read) that differ from a scan of the jobs: none, unless something wrote to
        the store around liteq (docs/cli.md, `db check`). With `repair`, every count is set from the scan,
        writers held off meanwhile. Scans the whole queue: for `liteq db check`."""
        return self._check_counts(repair)

    def file_info(self) -> FileInfo | None:
        """The file the queue is kept in and its write-ahead log's size, for an operator;
        None for a store with no file of its own (in memory, on a server)."""
        return None

    def close(self) -> None:
        """Release the store's resources (a backend closes its own, then calls this)."""
        self._offload.close()

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deadline(timeout: float | None) -> float | None:
    """When a wait of `timeout` seconds ends (monotonic clock); None: no wait."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    return time.monotonic() + max(0.0, float(timeout))


def _left(job_id: int, deadline: float | None) -> float:
    """The seconds left to wait for job `job_id`; ResultNotReady if none are."""
    left = 0.0 if deadline is None else deadline - time.monotonic()
    if left <= 0:
        raise ResultNotReady(f"job {job_id} has not finished")
    return left


def _kept(record: Record, now: float) -> bool:
    """Whether a job's row holds a result still readable at `now`."""
    return (
        record.status is Status.COMPLETED
        and record.result is not None
        and record.expires_at is not None
        and record.expires_at > now
    )


def result_of(job_id: int, record: Record | None, now: float) -> Any:
    """The result a job's row (None: no row) gives at `now`, as `store.result` gives it
    without waiting: the value, or ResultNotReady, JobFailed, ResultExpired."""
    outcome = _outcome(job_id, record, now)
    if outcome is _PENDING:
        raise ResultNotReady(f"job {job_id} has not finished")
    return outcome


def _outcome(job_id: int, record: Record | None, now: float) -> Any:
    """The result a row gives, or _PENDING; JobFailed or ResultExpired as `result` says."""
    if record is None:
        raise ResultExpired(
            f"job {job_id} is gone: its result expired and was purged, or it was deleted "
            "(or it completed without keep_result, deleted on completion)"
        )
    if record.status is Status.FAILED:
        raise JobFailed(
            f"job {job_id} failed: {record.error or 'no error recorded'}",
            job_id=job_id,
            error=record.error,
        )
    if record.status is not Status.COMPLETED:
        return _PENDING
    if _kept(record, now):
        return json.loads(record.result or "null")
    if record.keep_result is None:
        raise ResultExpired(f"job {job_id} completed without keep_result: no result was kept")
    raise ResultExpired(f"job {job_id}'s result expired")
