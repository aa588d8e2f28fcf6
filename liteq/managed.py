"""Status, the status machine, and ManagedJob: the record that wraps a Job."""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from liteq.errors import InvalidStateChange

if TYPE_CHECKING:
    from liteq.job import Job
    from liteq.stores._base import BaseStore


class Status(enum.StrEnum):
    """The status of a ManagedJob. The values are stored in files: never rename them."""

    UNQUEUED = "unqueued"
    QUEUED = "queued"
    RUNNING = "running"
    WAIT_ASYNC = "wait_async"
    COMPLETED = "completed"
    FAILED = "failed"


#: Every status change the machine allows. `restart()` and `delete()` bypass it.
TRANSITIONS: Final[Mapping[Status, frozenset[Status]]] = {
    Status.UNQUEUED: frozenset({Status.QUEUED}),
    Status.QUEUED: frozenset({Status.RUNNING}),
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.WAIT_ASYNC, Status.QUEUED}),
    Status.WAIT_ASYNC: frozenset({Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.QUEUED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset({Status.QUEUED}),
}

#: Statuses in which a job holds its coalesce_id (a COMPLETED job kept on file does not).
COALESCE_HOLDING: Final = frozenset(
    {Status.UNQUEUED, Status.QUEUED, Status.RUNNING, Status.WAIT_ASYNC, Status.FAILED}
)

#: A mulligan raises max_attempts by one, but not past this.
MULLIGAN_CAP: Final = 20


def check_transition(job_id: int, old: Status, new: Status) -> None:
    """Raise InvalidStateChange unless the machine allows `old` → `new`."""
    if new not in TRANSITIONS[old]:
        raise InvalidStateChange(f"job {job_id} cannot move from {old.value} to {new.value}")


@dataclasses.dataclass(slots=True)
class Record:
    """One stored row, as the stores keep it. Times are epoch seconds."""

    id: int
    job_type: str
    payload: str
    queue: str
    priority: int
    status: Status
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    coalesce_id: str | None
    max_runtime: float | None
    delete_on_complete: bool
    error: str | None
    traceback: str | None
    owner: str | None
    lease_until: float | None
    lock_token: str | None
    lock_until: float | None
    #: The owner host's monotonic clock when the lease ends / when max_runtime is up: a live
    #: worker on this host is judged by them, as no wall-clock step can move them.
    lease_mono: float | None = None
    deadline_mono: float | None = None


#: Column order of Record, which the SQL stores select and insert in.
COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Record))


_fields = operator.attrgetter(*COLUMNS)


def evolve(record: Record, **changes: object) -> Record:
    """A copy of `record` with `changes`: dataclasses.replace, without its cost on hot paths."""
    copy = Record(*_fields(record))
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


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

    __slots__ = ("_claimed", "_job", "_lock_token", "_record", "_store", "decode_error")

    def __init__(
        self,
        store: BaseStore,
        record: Record,
        job: Job | None,
        decode_error: str | None,
        lock_token: str | None = None,
    ) -> None:
        self._store = store
        self._record = record
        self._job = job
        self.decode_error = decode_error
        self._lock_token = lock_token
        # True only for the ManagedJob a worker got from claim(): it may finish the run.
        self._claimed = False

    # -- what is on file -------------------------------------------------
    @property
    def id(self) -> int:
        """The job's id: unique in its store, never reused."""
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
        """Not before this time."""
        return _utc_set(self._record.run_at)

    @property
    def started_at(self) -> datetime | None:
        """When the last attempt started."""
        return _utc(self._record.started_at)

    @property
    def finished_at(self) -> datetime | None:
        """When the job completed or finally failed."""
        return _utc(self._record.finished_at)

    @property
    def store(self) -> BaseStore:
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
        return self._store._retry(self, mulligan=mulligan)

    def restart(self) -> None:
        """Re-queue the job as new (attempts 0, due now) from any status but RUNNING.

        A RUNNING job is refused with InvalidState: restarting it would let a second
        worker run it while the first still does.
        """
        self._store._restart(self)

    def delete(self) -> None:
        """Delete the job. A worker still running it finds it gone and logs that."""
        self._store._delete(self.id, self._lock_token)

    def refresh(self) -> ManagedJob:
        """Return the job as it is on file now."""
        return self._store.get(self.id)

    def __repr__(self) -> str:
        return (
            f"<ManagedJob {self.id} {self.job_type} {self.status.value} "
            f"queue={self.queue!r} attempts={self.attempts}/{self.max_attempts}>"
        )
