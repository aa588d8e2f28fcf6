"""ManagedJob: a job on file, the record that wraps a Job."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from liteq.record import DUE_AT_ONCE, Record, own_run_at, waits
from liteq.status import Status

if TYPE_CHECKING:
    from liteq.job import Job
    from liteq.stores.contract import AppStore


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _utc_set(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class ManagedJob:
    """A job on file: its Job plus id, status, queue, priority, attempts, times and error.

    Read one with `store.get(job_id)`; a worker receives one from `store.claim()`.
    `job` is the decoded Job, or None when the payload cannot be decoded in this
    process (then `error` says why). Times are timezone-aware UTC datetimes.
    """

    __slots__ = (
        "_claimed",
        "_job",
        "_lock_token",
        "_record",
        "_store",
        "decode_error",
        "unknown_type",
    )

    def __init__(
        self,
        store: AppStore,
        record: Record,
        job: Job | None,
        decode_error: str | None,
        lock_token: str | None = None,
        claimed: bool = False,
        unknown_type: bool = False,
    ) -> None:
        self._store = store
        self._record = record
        self._job = job
        self.decode_error = decode_error
        #: No Job class of its type is imported in this process (a deployment matter, not
        #: the job's fault: a worker hands such a job back for one that knows its type).
        self.unknown_type = unknown_type
        self._lock_token = lock_token
        self._claimed = claimed

    @classmethod
    def enqueued(
        cls, store: AppStore, records: Iterable[Record], jobs: Iterable[Job]
    ) -> list[ManagedJob]:
        """ManagedJob(store, record, job, None) of each record and its job, as enqueue_many
        returns them: made without a call of __init__ per job, a tenth of the batch's Python."""
        new = object.__new__
        made = []
        for record, job in zip(records, jobs, strict=True):
            mjob = new(cls)
            mjob._store = store
            mjob._record = record
            mjob._job = job
            mjob.decode_error = None
            mjob.unknown_type = False
            mjob._lock_token = None
            mjob._claimed = False
            made.append(mjob)
        return made

    # -- for stores and workers ----------------------------------------------
    @property
    def record(self) -> Record:
        """The row as this ManagedJob last saw it (a store's own; do not change it)."""
        return self._record

    def replace_record(self, record: Record) -> None:
        """Make `record` this job's row: a store does so after a change made through it."""
        self._record = record

    @property
    def claimed(self) -> bool:
        """True only for the ManagedJob a worker got from a claim: it may finish the run."""
        return self._claimed

    @property
    def lock_token(self) -> str | None:
        """The token of `store.locked()`, for the ManagedJob that block yields."""
        return self._lock_token

    # -- what is on file -------------------------------------------------
    @property
    def id(self) -> int:
        """The job's id: unique in its store, never reused once committed (on SQLite, the
        id of a job whose transaction rolled back goes to the next job enqueued)."""
        return self._record.id

    @property
    def job(self) -> Job | None:
        """The Job, or None when its payload cannot be decoded here (see `error`)."""
        return self._job

    @property
    def job_type(self) -> str:
        """The stored type name, `module.QualName` of the Job class."""
        return self._record.job_type

    @property
    def status(self) -> Status:
        """The status when this ManagedJob was read or last changed through it."""
        return self._record.status

    @property
    def queue(self) -> str:
        """The queue name."""
        return self._record.queue

    @property
    def priority(self) -> int:
        """Higher runs first."""
        return self._record.priority

    @property
    def attempts(self) -> int:
        """How many times the job has been started."""
        return self._record.attempts

    @property
    def max_attempts(self) -> int:
        """How many starts the job may have before a failure is final."""
        return self._record.max_attempts

    @property
    def coalesce_id(self) -> str | None:
        """The coalescing key, or None."""
        return self._record.coalesce_id

    @property
    def max_runtime(self) -> float | None:
        """Seconds the job may run or wait before it counts as hung, or None."""
        return self._record.max_runtime

    @property
    def delete_on_complete(self) -> bool:
        """Whether the row is deleted when the job completes."""
        return self._record.delete_on_complete

    @property
    def error(self) -> str | None:
        """The last failure's message, or why the payload cannot be decoded."""
        return self._record.error or self.decode_error

    @property
    def traceback(self) -> str | None:
        """The last failure's traceback, if it raised."""
        return self._record.traceback

    @property
    def owner(self) -> str | None:
        """The worker running the job (`host/pid/start/token`), while it is RUNNING."""
        return self._record.owner

    @property
    def created_at(self) -> datetime:
        """When the job was enqueued."""
        return _utc_set(self._record.created_at)

    @property
    def run_at(self) -> datetime:
        """Not before this time (for a job due at once, when it was queued: created_at)."""
        run_at = own_run_at(self._record.run_at)
        return _utc_set(self._record.created_at if run_at == DUE_AT_ONCE else run_at)

    @property
    def waiting(self) -> bool:
        """Whether it is QUEUED but waits for jobs it runs after (`after=`) to complete."""
        return waits(self._record)

    @property
    def keep_result(self) -> float | None:
        """Seconds its result is kept once it completes (keep_result), or None."""
        return self._record.keep_result

    @property
    def expires_at(self) -> datetime | None:
        """When its result expires (and the job with it), once completed with keep_result."""
        return _utc(self._record.expires_at)

    @property
    def started_at(self) -> datetime | None:
        """When the last attempt started."""
        return _utc(self._record.started_at)

    @property
    def finished_at(self) -> datetime | None:
        """When the job completed or finally failed."""
        return _utc(self._record.finished_at)

    @property
    def store(self) -> AppStore:
        """The store this job lives in."""
        return self._store

    # -- changes -----------------------------------------------------------
    def retry(self, mulligan: bool = False) -> bool:
        """Re-queue the job if attempts remain, else mark it FAILED; return whether it was re-queued.

        A mulligan (the worker was killed, the job hung) re-queues at once and raises
        max_attempts by one, up to 20, so the fault does not use up the job's tries.
        Allowed from FAILED and WAIT_ASYNC, and from RUNNING only for the worker that
        claimed the job. Raises InvalidStateChange or InvalidState otherwise.
        """
        return self._store.retry(self, mulligan=mulligan)

    def restart(self) -> None:
        """Re-queue the job as new (attempts 0, due now) from any status but RUNNING.

        A RUNNING job is refused with InvalidState: restarting it would let a second
        worker run it while the first still does.
        """
        self._store.restart(self)

    def delete(self) -> None:
        """Delete the job. A worker still running it finds it gone and logs that."""
        self._store.delete(self)

    def result(self, timeout: float | None = None) -> Any:
        """Its result (what run returned, kept with keep_result), waiting up to `timeout`
        seconds for the job to finish (None: not at all). Raises ResultNotReady, JobFailed
        or ResultExpired: see `store.result`.

            mjob = store.enqueue(Export(user_id), keep_result=True)
            link = mjob.result(timeout=30)
        """
        return self._store.result(self.id, timeout)

    async def aresult(self, timeout: float | None = None) -> Any:
        """`result` from async code: `await mjob.aresult(30)`."""
        return await self._store.aresult(self.id, timeout)

    def dependency_results(self) -> dict[int, Any]:
        """The results of the jobs it runs after (`after=`) that kept one, by id: what its
        run reads (`def run(self, job): job.dependency_results()`)."""
        return self._store.dependency_results(self.id)

    def refresh(self) -> ManagedJob:
        """Return the job as it is on file now."""
        return self._store.get(self.id)

    def __repr__(self) -> str:
        return (
            f"<ManagedJob {self.id} {self.job_type} {self.status.value} "
            f"queue={self.queue!r} attempts={self.attempts}/{self.max_attempts}>"
        )


def describe(mjob: ManagedJob) -> str:
    """The job's description(), or its type when its class is not imported here (a broken
    description() must break no listing or log line: it says what it raised instead)."""
    if mjob.job is None:
        return mjob.job_type
    try:
        return mjob.job.description()
    except Exception as exc:
        return f"{mjob.job_type} (description() raised {type(exc).__name__})"
