"""The worker's side of a store: claiming runs, leases, acknowledgements, failures.

A *run* is one attempt of a job by one worker: a claim starts it, and an outcome (complete,
fail, crash, release, wait_async) ends it, fenced on (id, owner, attempt). `Runs` builds
these on the backend's primitives (`Backend`, its own base class) and on components it is
given: the `Announcer` (ManagedJobs, hooks, wake-ups after a commit), the `Waker` and the
workers' `Registry`. BaseStore adds the application's and the operator's sides on top.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from liteq.errors import InvalidState, InvalidStateChange, LeaseLost
from liteq.job import backoff
from liteq.options import storable
from liteq.record import UNOWNED, Changes, Record, evolve
from liteq.status import Status, check_transition
from liteq.stores import transitions
from liteq.stores.contract import Backend, Tx
from liteq.stores.events import Announcer, Event, Write, any_listens, listens
from liteq.stores.registry import Registry
from liteq.stores.wakeup import Waker

if TYPE_CHECKING:
    from liteq.managed import ManagedJob


log = logging.getLogger("liteq.store")

#: What a prefetched job has not yet had while it waits for its turn.
_NOT_STARTED: Final[Changes] = {"started_at": None, "deadline_mono": None}


class Runs(Backend):
    """What workers call: claims, leases and outcomes of *runs* (a run is one attempt of a
    job by one worker, from its claim to its outcome). Every acknowledgement is fenced on its
    run (id, owner, attempt): a worker whose job was re-queued and run elsewhere cannot
    finish the newer run."""

    def __init__(
        self,
        clock: Callable[[], float],
        announcer: Announcer,
        waker: Waker,
        registry: Registry,
    ) -> None:
        self.clock = clock
        self._announcer = announcer
        self._waker = waker
        self._registry = registry

    def _write(self) -> Write:
        """A prompt write transaction whose commit announces its events."""
        return Write(self._transaction(prompt=True), self._announcer.committed)

    # -- claims ---------------------------------------------------------------------------
    def claim(
        self, owner: str, queues: Sequence[str] | None = None, lease: float = 30.0
    ) -> ManagedJob | None:
        """Move the best due job in `queues` to RUNNING for `owner` and return it, or None.

        Best: first in the claim order (see Tx.claim). The claim holds a lease of `lease`
        seconds; renew it with `renew_lease` while the job runs.
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
        limit > 1, a job with max_runtime has no started_at until `mark_started`.
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
        # Only the backend's statements run inside: other workers' Python overlaps them.
        writes, changes = self._completions(done)
        lost: list[LeaseLost | None]
        records = None
        if all(made is None for _, made in writes):  # (rows deleted: the common case)
            records = self._complete_and_claim_alone(
                [claimed for claimed, _ in writes], owner, queues, lease, limit
            )
        if records is None:
            with self._transaction() as tx:
                lost = self._complete_in(tx, done, writes)
                records = self._claim_in(tx, queues, owner, lease, limit)
        else:
            lost = [None] * len(done)
        announcer = self._announcer
        if done:
            announcer.committed(self._completed(done, changes, lost))
        errors = [error for error in lost if error is not None]
        if not records:
            # Note the queue's state for wait_for_jobs, then look once more: a commit
            # between the claim and that note is then either seen or marks a change.
            self._waker.saw_nothing()
            records = self._complete_and_claim_alone((), owner, queues, lease, limit)
            if records is None:
                with self._transaction() as tx:
                    records = self._claim_in(tx, queues, owner, lease, limit)
        if not records:
            return errors, []
        self._waker.busy()
        managed = announcer.managed
        mjobs = [managed(record, None, True) for record in records]
        if announcer.listening() or any_listens(m.job for m in mjobs):
            # (most often nothing does: then no events are made)
            announcer.fire([(m.record, Status.QUEUED, "started", m.job) for m in mjobs])
        return errors, mjobs

    @staticmethod
    def _claim_in(
        tx: Tx, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        records = tx.claim(queues, owner, lease, limit)
        if limit > 1:
            # A prefetched job waits for its turn: its max_runtime counts from when it
            # really starts (mark_started), not from the claim.
            waiting = [r for r in records if r.max_runtime is not None]
            if waiting:
                tx.fenced_write_many([(r, _NOT_STARTED) for r in waiting])
                for record in waiting:
                    record.started_at = record.deadline_mono = None
        return records

    # -- leases -----------------------------------------------------------------------------
    def renew_lease(self, job: ManagedJob, lease: float = 30.0) -> bool:
        """Extend a claimed job's lease; False if this worker no longer owns it."""
        return self.renew_leases([job], lease) == [job]

    def renew_leases(self, jobs: Sequence[ManagedJob], lease: float = 30.0) -> list[ManagedJob]:
        """Extend the leases of claimed jobs in one transaction; return those still owned."""
        claimed = [job for job in jobs if job.claimed]
        with self._transaction() as tx:
            renewed: Changes = {"lease_until": tx.now + lease, "lease_mono": tx.mono + lease}
            kept = tx.fenced_write_many([(job.record, renewed) for job in claimed])
        return [job for job, ok in zip(claimed, kept, strict=True) if ok]

    def mark_started(self, mjob: ManagedJob) -> bool:
        """Record that a prefetched job starts now (max_runtime counts from here); False if
        this worker no longer owns it — then it must not be run."""
        claimed = mjob.record
        with self._transaction(prompt=True) as tx:
            changes: Changes = {"started_at": tx.now}
            if claimed.max_runtime is not None:
                changes["deadline_mono"] = tx.mono + claimed.max_runtime
            if not tx.fenced_write(claimed, changes):
                return False
        mjob.replace_record(evolve(claimed, **changes))
        return True

    def release(
        self, mjobs: Sequence[ManagedJob], *, delay: float = 0.0, error: str | None = None
    ) -> int:
        """Hand back claimed jobs that never started: QUEUED again (due in `delay` seconds,
        with `error` saying why), the attempt not counted.

        Returns how many were handed back (a job no longer this worker's is left alone).
        """
        error = None if error is None else storable(error)
        with self._write() as w:
            writes: list[tuple[Record, Changes]] = []
            for mjob in mjobs:
                claimed = mjob.record
                changes: Changes = {
                    "status": Status.QUEUED,
                    "attempts": claimed.attempts - 1,
                    "started_at": None,
                    **UNOWNED,
                }
                if delay:  # (otherwise it keeps its place: its run_at as it was)
                    changes["run_at"] = w.tx.now + delay
                if error is not None:
                    changes["error"] = error
                writes.append((claimed, changes))
            released = 0
            for mjob, (claimed, changes), ok in zip(
                mjobs, writes, w.tx.fenced_write_many(writes), strict=True
            ):
                if ok:
                    back = evolve(claimed, **changes)
                    w.events.append((back, Status.RUNNING, error or "released unstarted", mjob.job))
                    mjob.replace_record(back)
                    released += 1
        return released

    def held_by(self, owner: str) -> list[ManagedJob]:
        """The jobs RUNNING under `owner` as the store has them now, each as its claim (what
        `release` and the outcomes take, fenced on the run it reads).

        A worker whose claim's commit went through unseen (the connection dropped during
        or after it) holds jobs it does not know of: it finds them here.
        """
        managed = self._announcer.managed
        return [
            managed(record, None, True)
            for record in self._read_active()
            if record.status is Status.RUNNING and record.owner == owner
        ]

    # -- outcomes ---------------------------------------------------------------------------
    def complete(self, mjob: ManagedJob) -> None:
        """Mark a claimed job COMPLETED (deleted if delete_on_complete); LeaseLost if not ours."""
        lost = self.complete_many([mjob])
        if lost:
            raise lost[0]

    def complete_many(self, mjobs: Sequence[ManagedJob]) -> list[LeaseLost]:
        """Complete claimed jobs in one transaction (a worker's batched acknowledgement).

        Each is fenced on its own run; a job this worker no longer owns is left as it is
        and reported in the returned list of LeaseLost errors. A job that keeps a result
        (keep_result) stores its claimed record's `result` (JSON text; None: null).
        """
        writes, changes = self._completions(mjobs)
        with self._transaction() as tx:
            lost = self._complete_in(tx, mjobs, writes)
        self._announcer.committed(self._completed(mjobs, changes, lost))
        return [error for error in lost if error is not None]

    def _completions(
        self, mjobs: Sequence[ManagedJob]
    ) -> tuple[list[tuple[Record, Changes | None]], list[Changes]]:
        """The fenced writes that complete claimed jobs, and the changes each makes."""
        now = self.clock()
        changes: Changes = {
            "status": Status.COMPLETED,
            "finished_at": now,
            **UNOWNED,
            "error": None,
            "traceback": None,
        }
        writes: list[tuple[Record, Changes | None]] = []
        each: list[Changes] = []
        for mjob in mjobs:
            if not mjob.claimed:
                raise InvalidState(f"job {mjob.id} was not claimed by this worker")
            claimed = mjob.record
            if claimed.status is not Status.RUNNING:  # (a run's usual way out is allowed)
                check_transition(claimed.id, claimed.status, Status.COMPLETED)
            keep = claimed.keep_result
            if keep is None:
                writes.append((claimed, None if claimed.delete_on_complete else changes))
                each.append(changes)
            else:  # kept, whatever delete_on_complete says, until its result expires
                result = "null" if claimed.result is None else claimed.result
                kept = {**changes, "result": result, "expires_at": now + keep}
                writes.append((claimed, kept))
                each.append(kept)
        return writes, each

    @staticmethod
    def _complete_in(
        tx: Tx, mjobs: Sequence[ManagedJob], writes: list[tuple[Record, Changes | None]]
    ) -> list[LeaseLost | None]:
        """Make the `_completions` writes in `tx`, fenced, and release the dependents whose
        last dependency completed. Per job: None if it completed, else the LeaseLost error
        saying why not."""
        applied = tx.fenced_write_many(writes) if writes else []
        done = [mjob.id for mjob, ok in zip(mjobs, applied, strict=True) if ok]
        # A statement of its own, after the writes: one with PostgreSQL's delete would read a
        # snapshot older than the dependency row of an `after=` enqueue that committed while
        # the delete waited for its job's row, and that dependent would wait forever.
        waiting = tx.finish_dependencies(done) if done else []
        if waiting:  # (most often none: then nothing more runs; a release announces nothing)
            with Write(contextlib.nullcontext(tx), lambda events: None) as w:
                transitions.release_dependents(w, waiting)
        return [
            None if ok else _not_completed(tx.get(mjob.id), mjob)
            for mjob, ok in zip(mjobs, applied, strict=True)
        ]

    def _completed(
        self, mjobs: Sequence[ManagedJob], changes: list[Changes], lost: list[LeaseLost | None]
    ) -> list[Event]:
        """After the commit: the completed jobs' records, and their events (made only for
        jobs something listens to). A claimed job's record is its ManagedJob's own and
        changes in place: hooks get copies."""
        store_listens = self._announcer.listening()
        some_listen = store_listens or any_listens(mjob.job for mjob in mjobs)
        events: list[Event] = []
        for mjob, error, made in zip(mjobs, lost, changes, strict=True):
            if error is None:
                record = mjob.record
                for name, value in made.items():
                    setattr(record, name, value)
                if some_listen and (store_listens or listens(mjob.job)):
                    events.append((record, Status.RUNNING, "completed", mjob.job))
        return events

    def expire_results(self, limit: int = 500) -> int:
        """Purge up to `limit` completed jobs whose result expired (in a transaction of its
        own; workers call it now and then); return how many."""
        return self._expire_results(self.clock(), limit)

    def wait_async(self, mjob: ManagedJob) -> None:
        """Mark a claimed job WAIT_ASYNC: it is finished later by resolve_wait_async."""
        with self._write() as w:
            row = w.tx.get(mjob.id)
            if row is not None and _went_through(row, mjob, (Status.WAIT_ASYNC,)):
                mjob.replace_record(row)  # (nothing else makes a run of it WAIT_ASYNC)
                return
            rec = _owned(row, mjob)
            mjob.replace_record(
                transitions.change(
                    w, rec, Status.WAIT_ASYNC, "waiting for an async result", mjob.job, **UNOWNED
                )
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
        error = storable(error)
        traceback = None if traceback is None else storable(traceback)
        outside = mjob.status is Status.WAIT_ASYNC and not mjob.claimed
        with self._write() as w:
            if outside:
                rec = transitions.waiting(w, mjob.id, mjob.lock_token)
            else:
                row = w.tx.get(mjob.id)
                # A rescue's re-queue writes an error of its own ("hung: …"): the same
                # error on this very run is this failure's, tried before and committed.
                if row is not None and _went_through(
                    row, mjob, (Status.QUEUED, Status.FAILED), error=error
                ):
                    mjob.replace_record(row)
                    return mjob.status
                rec = _owned(row, mjob)
            if not retry:
                rec = evolve(rec, max_attempts=rec.attempts)
            delay = 0.0
            if not mulligan and rec.attempts < rec.max_attempts:
                delay = mjob.job.retry_delay(rec.attempts) if mjob.job else backoff(rec.attempts)
            mjob.replace_record(
                transitions.requeue_or_fail(
                    w,
                    rec,
                    mulligan=mulligan,
                    delay=delay,
                    job=mjob.job,
                    message=error,
                    error=error,
                    traceback=traceback,
                )
            )
        if outside:  # (a worker counts the attempts of the jobs it runs itself)
            self._registry.count_outside_worker(mjob.queue, completed=0, failed=1)
        return mjob.status

    def crash(self, mjob: ManagedJob, death: str, max_crashes: int) -> Status:
        """Record that a claimed job took its worker down (`death` says how: over max_rss,
        say), as a rescue records a worker's death: one more crash, a mulligan, and at
        `max_crashes` FAILED for good. Returns the job's new status; LeaseLost if it is
        no longer this worker's."""
        death = storable(death)
        with self._write() as w:
            rec = _owned(w.tx.get(mjob.id), mjob)
            reason = f"the worker running it was {death}"
            mjob.replace_record(transitions.crashed(w, rec, death, max_crashes, reason))
        return mjob.status

    def apply_async_result(self, mjob: ManagedJob, new: Status) -> Status:
        """Apply the Status an async job's resolve_wait_async returned (see resolve_wait_async)."""
        with self._write() as w:
            rec = transitions.waiting(w, mjob.id, mjob.lock_token)
            if new is Status.COMPLETED:
                updated = transitions.change(
                    w,
                    rec,
                    new,
                    "async result: completed",
                    mjob.job,
                    finished_at=w.tx.now,
                    error=None,
                    traceback=None,
                )
            elif new is Status.FAILED:
                error = rec.error or "the async result reported failure"
                updated = transitions.change(
                    w, rec, new, "async result: failed", mjob.job, finished_at=w.tx.now, error=error
                )
            elif new is Status.QUEUED:
                updated = transitions.requeue_or_fail(
                    w,
                    rec,
                    mulligan=False,
                    delay=0.0,
                    job=mjob.job,
                    message="async result: run again",
                )
            elif new is Status.WAIT_ASYNC:
                updated = rec
            else:
                raise InvalidStateChange(
                    f"resolve_wait_async of job {rec.id} returned {new!r}; return "
                    "COMPLETED, FAILED, QUEUED (run again) or WAIT_ASYNC (keep waiting)"
                )
            mjob.replace_record(updated)
        if new is Status.COMPLETED or new is Status.FAILED:
            self._registry.count_outside_worker(
                mjob.queue, completed=int(new is Status.COMPLETED), failed=int(new is Status.FAILED)
            )
        return mjob.status


def _owned(rec: Record | None, mjob: ManagedJob) -> Record:
    """`rec`, the row of a job the worker of `mjob` still runs; LeaseLost otherwise."""
    error = _lost(rec, mjob)
    if error is not None or rec is None:
        raise error or LeaseLost(f"job {mjob.id} was deleted while it ran", job_id=mjob.id)
    return rec


def _not_completed(rec: Record | None, mjob: ManagedJob) -> LeaseLost | None:
    """Why a fenced completion of `mjob` wrote nothing: None if this very run is already
    completed (an earlier try, reported failed, had committed), else LeaseLost.
    (A job deleted on completion leaves nothing to tell its completion from a delete.)"""
    claimed = mjob.record
    if _went_through(rec, mjob, (Status.COMPLETED,)):
        return None
    if rec is None and claimed.delete_on_complete:  # (the same, or someone's delete: unknown)
        return LeaseLost(
            f"job {mjob.id} was deleted while it ran, or by its own completion "
            "(delete_on_complete) if a commit reported lost had gone through",
            job_id=mjob.id,
        )
    # (should the fence and `owns` disagree, never let that pass as done)
    return _lost(rec, mjob) or LeaseLost(f"job {mjob.id} was not completed", job_id=mjob.id)


def _went_through(
    rec: Record | None, mjob: ManagedJob, outcome: tuple[Status, ...], *, error: str | None = None
) -> bool:
    """Whether `rec` is this very run of `mjob` already moved to a status of `outcome` by
    its own worker (with `error`, if given): an earlier try of the same write, reported
    failed, had committed. If so, says so in the log."""
    claimed = mjob.record
    if not (
        mjob.claimed
        and rec is not None
        and rec.status in outcome
        and rec.owner is None
        and (rec.attempts, rec.started_at) == (claimed.attempts, claimed.started_at)
        and (error is None or rec.error == error)
    ):  # (only this run's own outcome leaves its row so)
        return False
    log.warning(
        "job %d: the connection dropped during or after its commit; the commit had gone "
        "through: %s",
        mjob.id,
        rec.status.value,
    )
    return True


def _lost(rec: Record | None, mjob: ManagedJob) -> LeaseLost | None:
    """Why `rec` is no longer the run `mjob` claimed, or None if it still is."""
    if rec is None:
        return LeaseLost(f"job {mjob.id} was deleted while it ran", job_id=mjob.id)
    if not transitions.owns(rec, mjob.record, mjob.claimed):
        return LeaseLost(
            f"job {mjob.id} is no longer this worker's: it was re-queued "
            f"(status {rec.status.value}, attempt {rec.attempts})",
            job_id=mjob.id,
        )
    return None
