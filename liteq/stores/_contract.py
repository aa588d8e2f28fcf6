"""The Store protocol users program against, and the primitives a store implements (Tx)."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, Unpack, runtime_checkable

from liteq.errors import LeaseLost
from liteq.job import Job
from liteq.managed import ManagedJob, Record, Status, evolve
from liteq.options import EnqueueOptions

StatusHook = Callable[[ManagedJob, Status, str | None], None]
#: Columns to set on a row, by name.
Changes = dict[str, Any]
#: A status change to report after commit: (new record, old status, message, decoded job).
Event = tuple[Record, Status, str | None, Job | None]


@runtime_checkable
class Store(Protocol):
    """Where ManagedJobs live; all claiming and locking happen here."""

    def enqueue(self, job: Job, **options: Unpack[EnqueueOptions]) -> ManagedJob: ...
    def enqueue_many(
        self, jobs: Iterable[Job], **options: Unpack[EnqueueOptions]
    ) -> list[ManagedJob]: ...
    def get(self, job_id: int) -> ManagedJob: ...
    def get_by_coalesce_id(self, coalesce_id: str) -> ManagedJob | None: ...
    def count(self, queue: str | None = None, status: Status | None = None) -> int: ...
    def jobs(
        self, queue: str | None = None, status: Status | None = None
    ) -> Iterator[ManagedJob]: ...
    def delete(self, job_id: int) -> None: ...
    def locked(
        self, job_id: int, lease: float = 60.0
    ) -> contextlib.AbstractContextManager[ManagedJob]: ...
    def detect_hung_jobs(self) -> list[ManagedJob]: ...
    def claim(
        self, owner: str, queues: Sequence[str] | None = None, lease: float = 30.0
    ) -> ManagedJob | None: ...
    def claim_many(
        self,
        owner: str,
        queues: Sequence[str] | None = None,
        lease: float = 30.0,
        limit: int = 1,
    ) -> list[ManagedJob]: ...
    def renew_lease(self, job: ManagedJob, lease: float = 30.0) -> bool: ...
    def renew_leases(self, jobs: Sequence[ManagedJob], lease: float = 30.0) -> list[ManagedJob]: ...
    def release(self, mjobs: Sequence[ManagedJob]) -> int: ...
    def mark_started(self, mjob: ManagedJob) -> bool: ...
    def complete_many(self, mjobs: Sequence[ManagedJob]) -> list[LeaseLost]: ...
    def complete_and_claim(
        self,
        done: Sequence[ManagedJob],
        owner: str,
        queues: Sequence[str] | None = None,
        lease: float = 30.0,
        limit: int = 1,
    ) -> tuple[list[LeaseLost], list[ManagedJob]]: ...
    def wait_for_jobs(self, queues: Sequence[str] | None, timeout: float) -> bool: ...
    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None: ...
    def wake(self) -> None: ...
    def complete(self, mjob: ManagedJob) -> None: ...
    def wait_async(self, mjob: ManagedJob) -> None: ...
    def fail(
        self,
        mjob: ManagedJob,
        error: str,
        traceback: str | None = None,
        *,
        retry: bool = True,
        mulligan: bool = False,
    ) -> Status: ...
    def apply_async_result(self, mjob: ManagedJob, new: Status) -> Status: ...
    def close(self) -> None: ...


#: The columns of a job no worker holds.
UNOWNED: Changes = {"owner": None, "lease_until": None, "lease_mono": None, "deadline_mono": None}


def start_run(
    record: Record, now: float, mono: float, owner: str, lease: float, batch: bool
) -> Record:
    """Make `record` (the caller's own copy) that of a claimed job, and return it: RUNNING,
    its attempt counted, owned by `owner` and leased for `lease` seconds. In a batch, a job
    with max_runtime is not started yet: its clock starts when it really starts
    (mark_started)."""
    started = not (batch and record.max_runtime is not None)
    record.status = Status.RUNNING
    record.attempts += 1
    record.started_at = now if started else None
    record.finished_at = None
    record.owner = owner
    record.lease_until = now + lease
    record.lease_mono = mono + lease
    record.deadline_mono = (
        mono + record.max_runtime if started and record.max_runtime is not None else None
    )
    return record


class Tx(abc.ABC):
    """One write transaction of a store: the primitives the shared logic is built on."""

    def __init__(self, now: float, mono: float) -> None:
        #: The store's clock, and this host's monotonic clock, when the transaction began.
        self.now = now
        self.mono = mono
        self.events: list[Event] = []

    @abc.abstractmethod
    def get(self, job_id: int) -> Record | None:
        """The row with this id, or None."""

    @abc.abstractmethod
    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        """The row holding this coalesce id (its status is in COALESCE_HOLDING), or None."""

    @abc.abstractmethod
    def insert(self, record: Record) -> int | None:
        """Insert (ignoring record.id); return the new id, or None if the coalesce id is held."""

    def insert_many(self, records: Sequence[Record], uniform: bool = False) -> list[int | None]:
        """insert() for each record, in order; stores may batch the statements.

        `uniform`: they are new jobs that differ only in job_type and payload (as
        build_records says).
        """
        return [self.insert(record) for record in records]

    @abc.abstractmethod
    def update(self, record: Record) -> None:
        """Write every field of the row with record.id."""

    @abc.abstractmethod
    def delete(self, job_id: int) -> None:
        """Delete the row if it exists."""

    @abc.abstractmethod
    def claim(
        self, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        """Move the best `limit` due (run_at <= now), unlocked QUEUED rows of these queues
        (None: all) to RUNNING for `owner`, leased for `lease` seconds, counting the
        attempt (as start_run does); return them best first."""

    def fenced_write_many(self, writes: Sequence[tuple[Record, Changes | None]]) -> list[bool]:
        """fenced_write for many (claimed, changes) pairs; stores may batch the statements."""
        return [self.fenced_write(claimed, changes) for claimed, changes in writes]

    def fenced_write(self, claimed: Record, changes: Changes | None) -> bool:
        """Set these columns (or, with None, delete the row) only while the row is still
        `claimed`'s run: RUNNING, same owner, same attempt. Return False, changing nothing,
        otherwise. Only the named columns are written: others (a lock someone else took
        meanwhile, say) stay as they are on file.

        Stores may do this in one conditional statement; this default reads then writes.
        """
        rec = self.get(claimed.id)
        if rec is None or (rec.status, rec.owner, rec.attempts) != (
            Status.RUNNING,
            claimed.owner,
            claimed.attempts,
        ):
            return False
        if changes is None:
            self.delete(claimed.id)
        else:
            self.update(evolve(rec, **changes))
        return True
