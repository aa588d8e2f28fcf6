"""The Store contract and the base class that holds every store's semantics.

A concrete store supplies a few primitives: a write transaction (`_transaction`, yielding
a `Tx`), a claim, reads, and a way to wait for new jobs. Everything else — options,
the status machine, retries, mulligans, coalescing, locks, hung-job rescue and hooks —
lives here once, so every store behaves the same and runs the same contract suite.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Unpack

from liteq import rescue
from liteq.errors import (
    InvalidState,
    InvalidStateChange,
    JobLocked,
    JobNotFound,
    LeaseLost,
    LiteqError,
)
from liteq.job import Job, Task, backoff, decode
from liteq.managed import (
    COALESCE_HOLDING,
    MULLIGAN_CAP,
    ManagedJob,
    Record,
    Status,
    check_transition,
    evolve,
)
from liteq.options import INT64_MAX, EnqueueOptions, build_record, build_records, check_text
from liteq.stores._contract import UNOWNED, Changes, Event, StatusHook, Tx

log = logging.getLogger("liteq.store")


def check_job_id(job_id: object) -> int:
    """`job_id` if it can name a job in every store: TypeError or ValueError otherwise."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise TypeError(f"a job id is an int, not {job_id!r}")
    if not 0 < job_id <= INT64_MAX:
        raise ValueError(f"job ids run from 1 to 2**63-1, not {job_id!r}")
    return job_id


def _listens(job: Job | None) -> bool:
    """Whether a job's class has a status hook (None: it cannot be decoded; the store's
    hook still runs for it)."""
    return job is None or type(job).status_did_change is not Job.status_did_change


class BaseStore(abc.ABC):
    """Shared semantics of every store. Subclasses implement the primitives only."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
    ) -> None:
        self.clock = clock
        self.on_status_change = on_status_change
        # Waking idle workers: commits made through this object bump a counter and ring a
        # doorbell (a lock held while nobody rang: the cheapest wait there is); a store whose
        # other processes also write adds an external marker, polled.
        self._bell = threading.Lock()
        self._bell.acquire()
        self._local_version = 0
        self._seen: tuple[int, object] = (-1, None)
        self._busy_until = 0.0

    # -- primitives --------------------------------------------------------
    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction; committed on exit, rolled back on an exception."""

    @abc.abstractmethod
    def _read(self, job_id: int) -> Record | None: ...

    @abc.abstractmethod
    def _read_coalesce(self, coalesce_id: str) -> Record | None: ...

    @abc.abstractmethod
    def _count(self, queue: str | None, status: Status | None) -> int: ...

    @abc.abstractmethod
    def _page(
        self, after_id: int, queue: str | None, status: Status | None, limit: int
    ) -> list[Record]:
        """Up to `limit` rows with id > after_id, by id."""

    @abc.abstractmethod
    def _read_active(self) -> list[Record]:
        """Every RUNNING or WAIT_ASYNC row."""

    @abc.abstractmethod
    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        """The earliest run_at among QUEUED rows in these queues, or None."""

    #: How often wait_for_jobs checks the external marker; None: never (in-process only).
    #: Fast for a second after activity (more work is likely), slower when idle: on a VM
    #: each wake-up costs ~0.1 ms of CPU, so a constant fast poll would cost ~1 % of a core.
    _poll_interval: float | None = None
    _idle_poll_interval: float | None = None
    #: How long after activity the fast interval applies.
    _busy_window = 2.0

    def _external_marker(self) -> object:
        """Something that changes when another process commits (None: nothing can)."""
        return None

    def _marker(self) -> tuple[int, object]:
        return (self._local_version, self._external_marker())

    def _bump(self) -> None:
        self._local_version += 1
        if self._bell.locked():  # (most often it is still ringing from the last commit)
            try:  # noqa: SIM105 - hot path: suppress() would build a context object
                self._bell.release()
            except RuntimeError:  # rung meanwhile by another thread
                pass

    def wake(self) -> None:
        """Make every wait_for_jobs in this process return now (Worker.stop uses it)."""
        self._bump()

    def wait_for_jobs(self, queues: Sequence[str] | None, timeout: float) -> bool:
        """Block up to `timeout` seconds; return True early once the queue may have changed
        since this process's last claim (an enqueue here or a commit by another process).

        One waiting thread per store object is woken at once by a commit in this process;
        others sharing the object notice at their next poll or timeout.
        """
        now = time.monotonic()
        deadline = now + timeout
        while self._marker() == self._seen:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            poll = self._poll_interval
            if poll is not None and now > self._busy_until and self._idle_poll_interval:
                poll = self._idle_poll_interval
            self._bell.acquire(timeout=remaining if poll is None else min(remaining, poll))
        self._busy_until = time.monotonic() + self._busy_window
        return True

    def check_health(self) -> list[str]:
        """Conditions an operator should hear of (a growing WAL file, say), each in a
        sentence, new since the last call; workers and `liteq work` log them."""
        return []

    def close(self) -> None:  # noqa: B027 - optional: a store may have nothing to release
        """Release the store's resources."""

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hooks -------------------------------------------------------------
    def status_did_change(self, job: ManagedJob, old_status: Status, message: str | None) -> None:
        """Called after every status change; override in a subclass or pass `on_status_change`."""
        if self.on_status_change is not None:
            self.on_status_change(job, old_status, message)

    def _committed(self, events: list[Event]) -> None:
        """After a commit: wake this process's waiting workers, then run the hooks."""
        self._bump()
        if events:
            self._fire(events)

    def _store_listens(self) -> bool:
        return (
            self.on_status_change is not None
            or type(self).status_did_change is not BaseStore.status_did_change
        )

    def _fire(self, events: list[Event]) -> None:
        store_listens = self._store_listens()
        for record, old, message, job in events:
            if not (store_listens or _listens(job)):
                continue
            mjob = self._managed(evolve(record), job)  # its own copy, whatever it does later
            if mjob.job is not None:
                try:
                    mjob.job.status_did_change(mjob, old, message)
                except Exception:
                    log.exception("status_did_change of job %d raised", record.id)
            try:
                self.status_did_change(mjob, old, message)
            except Exception:
                log.exception("the store's status hook raised for job %d", record.id)

    def _managed(
        self, record: Record, job: Job | None = None, lock_token: str | None = None
    ) -> ManagedJob:
        error = None
        if job is None:
            try:
                job = decode(record.payload)
            except LiteqError as exc:
                error = str(exc)
        return ManagedJob(self, record, job, error, lock_token)

    def _write(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction; once committed, wakes waiting workers and runs the hooks."""
        return _Write(self)

    @staticmethod
    def _change(
        tx: Tx,
        rec: Record,
        new: Status,
        message: str | None,
        job: Job | None = None,
        **fields: Any,
    ) -> Record:
        check_transition(rec.id, rec.status, new)
        return BaseStore._apply(tx, rec.status, evolve(rec, status=new, **fields), message, job)

    @staticmethod
    def _apply(
        tx: Tx, old: Status, updated: Record, message: str | None, job: Job | None
    ) -> Record:
        new = updated.status
        if (
            updated.coalesce_id is not None
            and new in COALESCE_HOLDING
            and old not in COALESCE_HOLDING
        ):
            holder = tx.coalesce_holder(updated.coalesce_id)
            if holder is not None and holder.id != updated.id:
                raise InvalidState(
                    f"job {updated.id} cannot be re-queued: job {holder.id} holds its "
                    f"coalesce id {updated.coalesce_id!r}"
                )
        if new is Status.COMPLETED and updated.delete_on_complete:
            tx.delete(updated.id)
        else:
            tx.update(updated)
        tx.events.append((updated, old, message, job))
        return updated

    # -- enqueue -----------------------------------------------------------
    def enqueue(self, job: Job, **options: Unpack[EnqueueOptions]) -> ManagedJob:
        """Enqueue a job and return its ManagedJob.

        With a coalesce_id that a queued, running, waiting or failed job holds, return
        that job and create nothing. Raises TypeError (unencodable state, bad option
        type) or ValueError (bad option value) before anything is written.

            mjob = store.enqueue(SendEmail("ann@example.com"), priority=5, delay=60)
        """
        # enqueue_many([job], **options)[0] without its lists and loops (14 % fewer CPU
        # instructions per enqueue), and without options a shorter build_record (2.5 %).
        record = build_record(job, options, self.clock())
        events: list[Event] = []
        if self._store_listens() or _listens(job):
            events.append((record, Status.UNQUEUED, "enqueued", job))
        if record.coalesce_id is None:  # nothing can conflict: a write of its own
            self._insert_alone(record, events)
            return ManagedJob(self, record, job, None)
        with self._write() as tx:
            new_id = tx.insert(record)
            if new_id is None:
                holder = self._holder(tx, record)
            else:
                record.id = new_id
                tx.events.extend(events)
        if new_id is None:  # outside the transaction: other processes may write meanwhile
            return self._managed(holder)
        return ManagedJob(self, record, job, None)

    def enqueue_many(
        self, jobs: Iterable[Job], **options: Unpack[EnqueueOptions]
    ) -> list[ManagedJob]:
        """Enqueue jobs in one transaction, each with these options; return their ManagedJobs."""
        now = self.clock()
        jobs = list(jobs)
        records, uniform = build_records(jobs, options, now)
        holders: dict[int, Record] = {}  # by position: the jobs that hold a coalesce id
        store_listens = self._store_listens()
        with self._write() as tx:
            new_ids = tx.insert_many(records, uniform)
            events = tx.events
            for i, new_id in enumerate(new_ids):
                record = records[i]
                if new_id is None:
                    holders[i] = self._holder(tx, record)
                    continue
                record.id = new_id
                if store_listens or _listens(jobs[i]):
                    events.append((record, Status.UNQUEUED, "enqueued", jobs[i]))
        managed = [
            ManagedJob(self, record, job, None) for record, job in zip(records, jobs, strict=True)
        ]
        for i, holder in holders.items():  # outside the transaction: others may write meanwhile
            managed[i] = self._managed(holder)
        return managed

    def _insert_alone(self, record: Record, events: list[Event]) -> None:
        """Insert a new job that has no coalesce id, set its id, then (committed) wake
        workers and run `events`' hooks. A store may do it with less than _write."""
        with self._write() as tx:
            new_id = tx.insert(record)
            if new_id is None:
                raise LiteqError(f"job {record.job_type} was not inserted")
            record.id = new_id
            tx.events.extend(events)

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
            return Task(self, func, options)

        def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
            return Task(self, f, options)

        return decorate

    # -- reading -----------------------------------------------------------
    def get(self, job_id: int) -> ManagedJob:
        """Return the job with this id, or raise JobNotFound (works for undecodable rows too)."""
        record = self._read(check_job_id(job_id))
        if record is None:
            raise JobNotFound(f"no job with id {job_id}")
        return self._managed(record)

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
        if queue is not None:
            check_text(queue, "queue")
        status = None if status is None else Status(status)
        after = 0
        while True:
            page = self._page(after, queue, status, 500)
            for record in page:
                yield self._managed(record)
            if len(page) < 500:
                return
            after = page[-1].id

    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None:
        """Epoch seconds when the next queued job in these queues is due, or None."""
        return self._next_run_at(queues)

    # -- changes by users ----------------------------------------------------
    def _unlocked(self, rec: Record, token: str | None, now: float) -> None:
        if rec.lock_token is not None and rec.lock_token != token and (rec.lock_until or 0) > now:
            raise JobLocked(f"job {rec.id} is locked by another holder")

    def _current(self, tx: Tx, job_id: int, token: str | None) -> Record:
        rec = tx.get(job_id)
        if rec is None:
            raise JobNotFound(f"no job with id {job_id}")
        self._unlocked(rec, token, tx.now)
        return rec

    def _waiting(self, tx: Tx, mjob: ManagedJob) -> Record:
        """The job as it is now, which must still be WAIT_ASYNC (and not locked by others)."""
        rec = self._current(tx, mjob.id, mjob._lock_token)
        if rec.status is not Status.WAIT_ASYNC:
            raise InvalidState(f"job {rec.id} is {rec.status.value}, not wait_async")
        return rec

    def delete(self, job_id: int) -> None:
        """Delete a job; raise JobNotFound if missing, JobLocked if another holder locked it."""
        self._delete(check_job_id(job_id), None)

    def _delete(self, job_id: int, token: str | None) -> None:
        with self._write() as tx:
            self._current(tx, job_id, token)
            tx.delete(job_id)

    def _retry(self, mjob: ManagedJob, *, mulligan: bool) -> bool:
        with self._write() as tx:
            rec = tx.get(mjob.id)
            if rec is None:
                raise JobNotFound(f"no job with id {mjob.id}")
            if rec.status is Status.RUNNING and not self._owns(rec, mjob):
                raise InvalidState(
                    f"job {rec.id} is running in {rec.owner}; only that worker may retry it"
                )
            if not self._owns(rec, mjob):  # the running worker's own hand-back ignores locks
                self._unlocked(rec, mjob._lock_token, tx.now)
            if rec.status is Status.FAILED and rec.attempts >= rec.max_attempts and not mulligan:
                return False
            check_transition(rec.id, rec.status, Status.QUEUED)
            requeued = self._requeue_or_fail(
                tx,
                rec,
                mulligan=mulligan,
                delay=0.0,
                job=mjob.job,
                message="retried with a mulligan" if mulligan else "retried",
            )
        mjob._record = requeued
        return requeued.status is Status.QUEUED

    @staticmethod
    def _owns(rec: Record, mjob: ManagedJob) -> bool:
        return (
            mjob._claimed
            and rec.status is Status.RUNNING
            and rec.owner == mjob.owner
            and rec.attempts == mjob.attempts
        )

    def _requeue_or_fail(
        self,
        tx: Tx,
        rec: Record,
        *,
        mulligan: bool,
        delay: float,
        job: Job | None,
        message: str,
        **fields: Any,
    ) -> Record:
        max_attempts = rec.max_attempts
        if mulligan and max_attempts < MULLIGAN_CAP:
            max_attempts += 1
        if rec.attempts < max_attempts:
            return self._change(
                tx,
                rec,
                Status.QUEUED,
                message,
                job,
                max_attempts=max_attempts,
                run_at=tx.now + delay,
                **UNOWNED,
                **fields,
            )
        if rec.status is Status.FAILED:
            return rec
        return self._change(
            tx,
            rec,
            Status.FAILED,
            message,
            job,
            max_attempts=max_attempts,
            finished_at=tx.now,
            **UNOWNED,
            **fields,
        )

    def _restart(self, mjob: ManagedJob) -> None:
        with self._write() as tx:
            rec = self._current(tx, mjob.id, mjob._lock_token)
            if rec.status is Status.RUNNING:
                raise InvalidState(
                    f"job {rec.id} is running in {rec.owner}; restarting it would run "
                    "it twice at once: stop its worker or wait for it"
                )
            # restart() bypasses the status machine on purpose.
            fresh = evolve(
                rec,
                status=Status.QUEUED,
                attempts=0,
                run_at=tx.now,
                started_at=None,
                finished_at=None,
                error=None,
                traceback=None,
                **UNOWNED,
            )
            mjob._record = self._apply(tx, rec.status, fresh, "restarted", mjob.job)

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
        with self._write() as tx:
            rec = self._current(tx, job_id, None)
            rec = evolve(rec, lock_token=token, lock_until=tx.now + lease)
            tx.update(rec)
        try:
            yield self._managed(rec, lock_token=token)
        finally:
            with self._write() as tx:
                current = tx.get(job_id)
                if current is not None and current.lock_token == token:
                    tx.update(evolve(current, lock_token=None, lock_until=None))

    # -- the worker's side -------------------------------------------------
    def claim(
        self, owner: str, queues: Sequence[str] | None = None, lease: float = 30.0
    ) -> ManagedJob | None:
        """Move the best due job in `queues` to RUNNING for `owner` and return it, or None.

        Best: highest priority, then earliest run_at, then lowest id. The claim holds a
        lease of `lease` seconds; renew it with `renew_lease` while the job runs.
        """
        claimed = self.claim_many(owner, queues, lease, 1)
        return claimed[0] if claimed else None

    def claim_many(
        self,
        owner: str,
        queues: Sequence[str] | None = None,
        lease: float = 30.0,
        limit: int = 1,
    ) -> list[ManagedJob]:
        """Claim up to `limit` jobs in one transaction, best first (a worker's prefetch).

        Each is RUNNING, owned by `owner` and leased, exactly as if claimed alone: run
        them in order, acknowledge each, and renew their leases while holding them. With
        limit > 1, a job with max_runtime has no started_at until `mark_started`: its time
        limit counts from when it really starts, not from the claim.
        """
        return self.complete_and_claim((), owner, queues, lease, limit)[1]

    def complete_and_claim(
        self,
        done: Sequence[ManagedJob],
        owner: str,
        queues: Sequence[str] | None = None,
        lease: float = 30.0,
        limit: int = 1,
    ) -> tuple[list[LeaseLost], list[ManagedJob]]:
        """complete_many(done) and claim_many(...) in one transaction: a worker's steady
        state, one commit per job instead of two. Returns (the LeaseLost errors of `done`,
        the jobs claimed).
        """
        # Only SQL runs while the file is locked: other workers' Python overlaps with it.
        writes, changes = self._completions(done)
        with self._transaction() as tx:
            lost = self._complete_in(tx, done, writes)
            records = tx.claim(queues, owner, lease, limit)
        if done:
            self._committed(self._completed(done, changes, lost))
        errors = [error for error in lost if error is not None]
        if not records:
            # Note the queue's version for wait_for_jobs, then look once more: a commit
            # between the claim and this read is then either seen or marks a change.
            self._seen = self._marker()
            with self._transaction() as tx:
                records = tx.claim(queues, owner, lease, limit)
        if not records:
            return errors, []
        self._busy_until = time.monotonic() + self._busy_window
        mjobs = [self._managed(record) for record in records]
        listens = self._store_listens()
        for mjob in mjobs:
            mjob._claimed = True
            listens = listens or _listens(mjob.job)
        if listens:  # (most often nothing does: then no events are made)
            self._fire([(m._record, Status.QUEUED, "started", m.job) for m in mjobs])
        return errors, mjobs

    def renew_lease(self, job: ManagedJob, lease: float = 30.0) -> bool:
        """Extend a claimed job's lease; False if this worker no longer owns it."""
        return self.renew_leases([job], lease) == [job]

    def renew_leases(self, jobs: Sequence[ManagedJob], lease: float = 30.0) -> list[ManagedJob]:
        """Extend the leases of claimed jobs in one transaction; return those still owned."""
        owned = []
        with self._write() as tx:
            for job in jobs:
                rec = tx.get(job.id)
                if rec is not None and self._owns(rec, job):
                    tx.update(evolve(rec, lease_until=tx.now + lease, lease_mono=tx.mono + lease))
                    owned.append(job)
        return owned

    def mark_started(self, mjob: ManagedJob) -> bool:
        """Record that a prefetched job starts now (max_runtime counts from here); False if
        this worker no longer owns it — then it must not be run."""
        claimed = mjob._record
        with self._write() as tx:
            changes: Changes = {"started_at": tx.now}
            if claimed.max_runtime is not None:
                changes["deadline_mono"] = tx.mono + claimed.max_runtime
            if not tx.fenced_write(claimed, changes):
                return False
        mjob._record = evolve(claimed, **changes)
        return True

    def release(self, mjobs: Sequence[ManagedJob]) -> int:
        """Hand back claimed jobs that never started: QUEUED again, the attempt not counted.

        Returns how many were handed back (a job no longer this worker's is left alone).
        """
        released = 0
        with self._write() as tx:
            for mjob in mjobs:
                claimed = mjob._record
                changes: Changes = {
                    "status": Status.QUEUED,
                    "attempts": claimed.attempts - 1,
                    "started_at": None,
                    **UNOWNED,
                }
                back = evolve(claimed, **changes)
                if tx.fenced_write(claimed, changes):
                    tx.events.append((back, Status.RUNNING, "released unstarted", mjob.job))
                    mjob._record = back
                    released += 1
        return released

    def _owned(self, tx: Tx, mjob: ManagedJob) -> Record:
        rec = tx.get(mjob.id)
        if rec is None:
            raise LeaseLost(f"job {mjob.id} was deleted while it ran")
        if not self._owns(rec, mjob):
            raise LeaseLost(
                f"job {mjob.id} is no longer this worker's: it was re-queued "
                f"(status {rec.status.value}, attempt {rec.attempts})"
            )
        return rec

    def complete(self, mjob: ManagedJob) -> None:
        """Mark a claimed job COMPLETED (deleted if delete_on_complete); LeaseLost if not ours."""
        lost = self.complete_many([mjob])
        if lost:
            raise lost[0]

    def complete_many(self, mjobs: Sequence[ManagedJob]) -> list[LeaseLost]:
        """Complete claimed jobs in one transaction (a worker's batched acknowledgement).

        Each is fenced on its own run; a job this worker no longer owns is left as it is
        and reported in the returned list of LeaseLost errors.
        """
        writes, changes = self._completions(mjobs)
        with self._transaction() as tx:
            lost = self._complete_in(tx, mjobs, writes)
        self._committed(self._completed(mjobs, changes, lost))
        return [error for error in lost if error is not None]

    def _completions(
        self, mjobs: Sequence[ManagedJob]
    ) -> tuple[list[tuple[Record, Changes | None]], Changes]:
        """The fenced writes that complete claimed jobs, and the changes they make."""
        changes: Changes = {
            "status": Status.COMPLETED,
            "finished_at": self.clock(),
            **UNOWNED,
            "error": None,
            "traceback": None,
        }
        writes: list[tuple[Record, Changes | None]] = []
        for mjob in mjobs:
            if not mjob._claimed:
                raise InvalidState(f"job {mjob.id} was not claimed by this worker")
            claimed = mjob._record
            check_transition(claimed.id, claimed.status, Status.COMPLETED)
            writes.append((claimed, None if claimed.delete_on_complete else changes))
        return writes, changes

    def _complete_in(
        self, tx: Tx, mjobs: Sequence[ManagedJob], writes: list[tuple[Record, Changes | None]]
    ) -> list[LeaseLost | None]:
        """Make the `_completions` writes in `tx`, fenced: each applies only while this run
        still owns its job. Per job: None if it completed, else the LeaseLost error."""
        applied = tx.fenced_write_many(writes) if writes else []
        lost: list[LeaseLost | None] = []
        for mjob, ok in zip(mjobs, applied, strict=True):
            error = None
            if not ok:
                try:
                    self._owned(tx, mjob)
                except LeaseLost as exc:
                    error = exc
                else:  # the fence and _owns agree; never let a disagreement pass as done
                    error = LeaseLost(f"job {mjob.id} was not completed: its row changed")
            lost.append(error)
        return lost

    def _completed(
        self, mjobs: Sequence[ManagedJob], changes: Changes, lost: list[LeaseLost | None]
    ) -> list[Event]:
        """After the commit: the completed jobs' new records, and their events.

        A claimed job's record is its ManagedJob's own (a claim reads a new one; hooks get
        copies, see _fire): it changes in place, not copied (a copy cost 6 % of the CPU
        instructions of a noop job).
        Events are made only for jobs something listens to.
        """
        store_listens = self._store_listens()
        events: list[Event] = []
        for mjob, error in zip(mjobs, lost, strict=True):
            if error is None:
                record = mjob._record
                for name, value in changes.items():
                    setattr(record, name, value)
                if store_listens or _listens(mjob.job):
                    events.append((record, Status.RUNNING, "completed", mjob.job))
        return events

    def wait_async(self, mjob: ManagedJob) -> None:
        """Mark a claimed job WAIT_ASYNC: it is finished later by resolve_wait_async."""
        with self._write() as tx:
            rec = self._owned(tx, mjob)
            mjob._record = self._change(
                tx,
                rec,
                Status.WAIT_ASYNC,
                "waiting for an async result",
                mjob.job,
                **UNOWNED,
            )

    def fail(
        self,
        mjob: ManagedJob,
        error: str,
        traceback: str | None = None,
        *,
        retry: bool = True,
        mulligan: bool = False,
    ) -> Status:
        """Record a failed attempt; re-queue with backoff while attempts remain, else FAILED.

        With retry=False the failure is final. With mulligan=True the job is re-queued
        at once without using up an attempt. Returns the job's new status.
        """
        with self._write() as tx:
            if mjob.status is Status.WAIT_ASYNC and not mjob._claimed:
                rec = self._waiting(tx, mjob)
            else:
                rec = self._owned(tx, mjob)
            if not retry:
                rec = evolve(rec, max_attempts=rec.attempts)
            delay = 0.0
            if not mulligan and rec.attempts < rec.max_attempts:
                delay = mjob.job.retry_delay(rec.attempts) if mjob.job else backoff(rec.attempts)
            mjob._record = self._requeue_or_fail(
                tx,
                rec,
                mulligan=mulligan,
                delay=delay,
                job=mjob.job,
                message=error,
                error=error,
                traceback=traceback,
            )
        return mjob.status

    def apply_async_result(self, mjob: ManagedJob, new: Status) -> Status:
        """Apply the Status an async job's resolve_wait_async returned (see resolve_wait_async)."""
        with self._write() as tx:
            rec = self._waiting(tx, mjob)
            if new is Status.COMPLETED:
                mjob._record = self._change(
                    tx,
                    rec,
                    new,
                    "async result: completed",
                    mjob.job,
                    finished_at=tx.now,
                    error=None,
                    traceback=None,
                )
            elif new is Status.FAILED:
                mjob._record = self._change(
                    tx,
                    rec,
                    new,
                    "async result: failed",
                    mjob.job,
                    finished_at=tx.now,
                    error=rec.error or "the async result reported failure",
                )
            elif new is Status.QUEUED:
                mjob._record = self._requeue_or_fail(
                    tx,
                    rec,
                    mulligan=False,
                    delay=0.0,
                    job=mjob.job,
                    message="async result: run again",
                )
            elif new is not Status.WAIT_ASYNC:
                raise InvalidStateChange(
                    f"resolve_wait_async of job {rec.id} returned {new!r}; return "
                    "COMPLETED, FAILED, QUEUED (run again) or WAIT_ASYNC (keep waiting)"
                )
        return mjob.status

    # -- hung jobs ---------------------------------------------------------
    def detect_hung_jobs(self) -> list[ManagedJob]:
        """Re-queue with a mulligan every hung job; return them.

        Hung: RUNNING or WAIT_ASYNC past max_runtime, or RUNNING with an expired lease or
        a worker process that is gone from this host. A hung job whose worker is still
        alive on this host is stopped (SIGKILL) first, so it never runs twice at once;
        one whose worker is alive on another host is left to that worker until its
        lease expires.
        """
        return rescue.detect_hung_jobs(self)

    def rescue(self, seen: Record, decide: rescue.Decide) -> ManagedJob | None:
        """Re-queue with a mulligan a job found hung in `seen`, if it still is.

        In one write transaction: the row is read again (no other writer can change it
        meanwhile), `decide(row, now, monotonic now)` says why it is hung or None (and
        may stop its worker first), and the outcome is written. None if the job moved on
        since `seen` or `decide` said no.
        """
        with self._write() as tx:
            current = tx.get(seen.id)
            if current is None or (current.status, current.owner, current.attempts) != (
                seen.status,
                seen.owner,
                seen.attempts,
            ):
                return None
            reason = decide(current, tx.now, tx.mono)
            if reason is None:
                return None
            updated = self._requeue_or_fail(
                tx,
                current,
                mulligan=True,
                delay=0.0,
                job=None,
                message=f"hung: {reason}",
                error=f"hung: {reason}",
            )
        return self._managed(updated)


class _Write:
    """BaseStore._write: a class, not a generator, as it runs on every enqueue and change."""

    __slots__ = ("_inner", "_store", "_tx")

    def __init__(self, store: BaseStore) -> None:
        self._store = store
        self._inner = store._transaction()

    def __enter__(self) -> Tx:
        self._tx = self._inner.__enter__()
        return self._tx

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        suppressed = self._inner.__exit__(kind, exc, tb)
        if kind is None:  # committed
            self._store._committed(self._tx.events)
        return suppressed
