"""The rules of a status change, applied inside a write transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from liteq.errors import InvalidState, JobLocked, JobNotFound
from liteq.record import DUE_AT_ONCE, UNOWNED, Record, evolve, held, own_run_at, waits
from liteq.status import COALESCE_HOLDING, MULLIGAN_CAP, Status, check_transition

if TYPE_CHECKING:
    from liteq.job import Job
    from liteq.stores.events import Write


def change(
    w: Write, rec: Record, new: Status, message: str | None, job: Job | None, **fields: Any
) -> Record:
    """Move `rec` to `new` as the status machine allows, with these other fields."""
    check_transition(rec.id, rec.status, new)
    return apply(w, rec.status, evolve(rec, status=new, **fields), message, job)


def apply(w: Write, old: Status, updated: Record, message: str | None, job: Job | None) -> Record:
    """Write `updated` (a job now taking its coalesce id back must find it free; a job
    completed with delete_on_complete goes, unless it keeps a result) and record the event.
    A job that completes releases its dependents; one that fails for good fails them."""
    new = updated.status
    if updated.coalesce_id is not None and new in COALESCE_HOLDING and old not in COALESCE_HOLDING:
        holder = w.tx.coalesce_holder(updated.coalesce_id)
        if holder is not None and holder.id != updated.id:
            raise InvalidState(
                f"job {updated.id} cannot be re-queued: job {holder.id} holds its "
                f"coalesce id {updated.coalesce_id!r}"
            )
    if new is Status.COMPLETED and updated.keep_result is not None:
        updated.result = "null" if updated.result is None else updated.result
        updated.expires_at = w.tx.now + updated.keep_result
    if new is Status.COMPLETED and updated.delete_on_complete and updated.keep_result is None:
        w.tx.delete(updated.id)
    else:
        w.tx.update(updated)
    w.events.append((updated, old, message, job))
    if new is Status.COMPLETED and old is not Status.COMPLETED:
        release_dependents(w, w.tx.finish_dependencies([updated.id]))
    elif new is Status.FAILED and old is not Status.FAILED:
        fail_dependents(w, updated.id, "failed")
    return updated


def release_dependents(w: Write, waiting: list[int]) -> None:
    """Jobs completed in this write, and `w.tx.finish_dependencies` marked them done for
    the jobs `waiting` on them: those whose last dependency this was become due (at their
    own run_at)."""
    for job_id in sorted(set(waiting)):
        rec = w.tx.get(job_id)
        if rec is None or not waits(rec):
            continue
        if not any(not finished for _, finished in w.tx.dependencies(job_id)):
            # (no status change, no event: the commit wakes this process's idle workers,
            # and PostgreSQL's trigger those elsewhere)
            w.tx.update(evolve(rec, run_at=own_run_at(rec.run_at)))


def fail_dependents(w: Write, job_id: int, what: str) -> None:
    """Job `job_id` failed for good or was deleted (`what`): the jobs waiting for it fail
    ("dependency 12 failed"), and theirs in turn, in this write. (A job that fails this way
    bypasses the status machine, from QUEUED, as restart() does: it never ran.)"""
    for dependent in sorted(w.tx.dependents([job_id])):
        rec = w.tx.get(dependent)
        if rec is None or not waits(rec):
            continue
        message = f"dependency {job_id} {what}"
        failed = evolve(
            rec,
            status=Status.FAILED,
            run_at=own_run_at(rec.run_at),
            finished_at=w.tx.now,
            error=message,
            traceback=None,
        )
        apply(w, rec.status, failed, message, None)  # (which fails its own dependents)


def wait_again(w: Write, rec: Record) -> Record:
    """`rec`, being queued again by hand (retry, restart), made to wait for those of its
    dependencies that have not completed (a job whose row is gone counts as completed:
    one deleted by hand had failed this one). InvalidState if one of them has failed."""
    dependencies = w.tx.dependencies(rec.id)
    if not dependencies:
        return rec
    pending = []
    for after_id, _ in dependencies:
        dep = w.tx.get(after_id)
        if dep is not None and dep.status is Status.FAILED:
            raise InvalidState(
                f"job {rec.id} depends on job {after_id}, which failed: retry that one first"
            )
        if dep is not None and dep.status is not Status.COMPLETED:
            pending.append(after_id)
    w.tx.add_dependencies(rec.id, [(a, a not in pending) for a, _ in dependencies])
    if pending and rec.status is Status.QUEUED:
        rec = evolve(rec, run_at=held(own_run_at(rec.run_at)))
        w.tx.update(rec)
    return rec


def requeue_or_fail(
    w: Write,
    rec: Record,
    *,
    mulligan: bool,
    delay: float,
    job: Job | None,
    message: str,
    **fields: Any,
) -> Record:
    """QUEUED again after `delay` seconds while attempts remain (a mulligan grants one
    more, up to MULLIGAN_CAP), else FAILED."""
    max_attempts = rec.max_attempts
    if mulligan and max_attempts < MULLIGAN_CAP:
        max_attempts += 1
    if rec.attempts < max_attempts:
        return change(
            w,
            rec,
            Status.QUEUED,
            message,
            job,
            max_attempts=max_attempts,
            run_at=w.tx.now + delay if delay else DUE_AT_ONCE,
            **UNOWNED,
            **fields,
        )
    if rec.status is Status.FAILED:
        return rec
    return change(
        w,
        rec,
        Status.FAILED,
        message,
        job,
        max_attempts=max_attempts,
        finished_at=w.tx.now,
        **UNOWNED,
        **fields,
    )


def crashed(w: Write, rec: Record, death: str, max_crashes: int, reason: str) -> Record:
    """A RUNNING job whose worker died running it (`death` says how, `reason` in full):
    one more crash; at `max_crashes` it fails for good, else it is re-queued with a
    mulligan (a death is no fault of the job's until it happens again and again)."""
    crashes = rec.crashes + 1
    if crashes < max_crashes:
        message = f"{reason} (worker deaths: {crashes}; it fails for good at {max_crashes})"
        return requeue_or_fail(
            w,
            rec,
            mulligan=True,
            delay=0.0,
            job=None,
            message=message,
            error=message,
            crashes=crashes,
        )
    times = "once" if crashes == 1 else f"{crashes} times"
    message = f"the worker running it died {times} ({death})"
    return change(
        w,
        rec,
        Status.FAILED,
        message,
        None,
        finished_at=w.tx.now,
        error=message,
        traceback=None,
        crashes=crashes,
        **UNOWNED,
    )


def restarted(rec: Record, now: float) -> Record:
    """The job as new (attempts 0, due now): restart() bypasses the machine on purpose."""
    return evolve(
        rec,
        status=Status.QUEUED,
        attempts=0,
        crashes=0,
        run_at=DUE_AT_ONCE,
        started_at=None,
        finished_at=None,
        error=None,
        traceback=None,
        result=None,
        expires_at=None,
        **UNOWNED,
    )


def unlocked(rec: Record, token: str | None, now: float) -> Record:
    """`rec`, unless a holder other than `token` has locked it: JobLocked."""
    if rec.lock_token is not None and rec.lock_token != token and (rec.lock_until or 0) > now:
        raise JobLocked(f"job {rec.id} is locked by another holder")
    return rec


def current(w: Write, job_id: int, token: str | None) -> Record:
    """The job as it is now, not locked by another holder; JobNotFound if it is gone."""
    rec = w.tx.get(job_id)
    if rec is None:
        raise JobNotFound(f"no job with id {job_id}")
    return unlocked(rec, token, w.tx.now)


def waiting(w: Write, job_id: int, token: str | None) -> Record:
    """The job as it is now (see `current`), which must still be WAIT_ASYNC: InvalidState
    otherwise."""
    rec = current(w, job_id, token)
    if rec.status is not Status.WAIT_ASYNC:
        raise InvalidState(f"job {rec.id} is {rec.status.value}, not wait_async")
    return rec


def owns(rec: Record, claimed: Record, is_claim: bool) -> bool:
    """Whether `rec` is still the run a worker claimed as `claimed`."""
    return (
        is_claim
        and rec.status is Status.RUNNING
        and rec.owner == claimed.owner
        and rec.attempts == claimed.attempts
    )
