"""The rules of a status change, applied inside a write transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from liteq.errors import InvalidState, JobLocked, JobNotFound
from liteq.record import DUE_AT_ONCE, UNOWNED, Record, evolve
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
    completed with delete_on_complete goes) and record the event."""
    new = updated.status
    if updated.coalesce_id is not None and new in COALESCE_HOLDING and old not in COALESCE_HOLDING:
        holder = w.tx.coalesce_holder(updated.coalesce_id)
        if holder is not None and holder.id != updated.id:
            raise InvalidState(
                f"job {updated.id} cannot be re-queued: job {holder.id} holds its "
                f"coalesce id {updated.coalesce_id!r}"
            )
    if new is Status.COMPLETED and updated.delete_on_complete:
        w.tx.delete(updated.id)
    else:
        w.tx.update(updated)
    w.events.append((updated, old, message, job))
    return updated


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
