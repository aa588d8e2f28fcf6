"""The store contract: what applications, workers and operators call, and what a backend
implements.

Three roles, by who calls them: `AppStore` (an application, and a job's own code through
its ManagedJob), `WorkerStore` (the worker loop and the rescue of hung jobs) and
`OperatorStore` (admin, the command line, the dashboard; it includes `AppStore`). `Store`
is all three: what a store is. `BaseStore` implements them once for every backend, as rules
over the primitives listed in docs/architecture.md; a backend (MemoryStore, SQLiteStore, ...)
subclasses it and
supplies those primitives (`Backend`), its write transaction (`Tx`) and its workers'
registry (`registry.Registry`). The contract suite in `tests/contract/` runs against every
backend: a new one joins by passing it.

Locking rules a backend must keep:

- A write transaction (`Backend._transaction`) sees its own writes and no one else's
  uncommitted ones; it commits on a clean exit and rolls back on an exception, whole.
- Read for update: a row `Tx.get` or `Tx.coalesce_holder` returns stays as read until the
  transaction ends (SQLite: the file's write lock is taken at BEGIN IMMEDIATE; PostgreSQL:
  SELECT … FOR UPDATE). The rules read, decide, then write on that promise.
- `Tx.claim` skips rows another transaction holds (PostgreSQL: FOR UPDATE SKIP LOCKED) and
  never returns a row another claim returned, committed or not.
- A held coalesce id is not an error: `Tx.insert` returns None and the transaction goes on
  (a unique violation is translated, never raised).
- A fenced write changes a row only while it is still the claimed run (RUNNING, same owner,
  same attempt).
- `Tx.insert` returns None only while the holder it met is one `Tx.coalesce_holder` finds in
  the same transaction (a backend whose insert can meet a holder that is not yet visible
  tries again, as PostgreSQL's does).

Other rules a backend keeps:

- Faults are liteq's errors, never a driver's: `StoreUnavailable` for a server that cannot
  be reached now (a worker waits it out), `StoreError` for the rest (`StoreMoved`,
  `StoreCorrupt` where they apply). A commit whose outcome is unknown (the connection
  dropped during it) is a `StoreError` too: the rules above it assume it may have gone
  through, and look (`Runs.held_by`, an acknowledgement that finds its own outcome done).
- One store object is shared by a worker's loop and its heartbeat thread: its primitives
  are safe to call from two threads (a mutex around the connection, as `Link` and
  `QueueFile` do).
- No connection crosses `fork()`: a store closes what it holds before a fork, and a child
  opens its own.
- A backend overrides, beyond the primitives, what its transport needs (`close`,
  `wait_for_jobs` with its own wake-ups, `file_info`, `check_health`).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Unpack, runtime_checkable

from liteq.record import Changes, Record, evolve
from liteq.status import DEFAULT_MAX_CRASHES, Status

if TYPE_CHECKING:
    from liteq.errors import LeaseLost
    from liteq.job import Job
    from liteq.managed import ManagedJob
    from liteq.options import EnqueueOptions
    from liteq.periodic import Periodic


class Hung(NamedTuple):
    """Why a job is hung, as a rescue decides. `death` says how its worker died while
    running it ("signal 11"), None if it did not (a lease given up, a deliberate stop): a
    death counts in the job's `crashes`, and the job fails for good at `max_crashes`."""

    reason: str
    death: str | None = None
    max_crashes: int = DEFAULT_MAX_CRASHES


#: (row as it is now, store clock, this host's monotonic clock) -> why it is hung (a
#: string: not a death), or None.
Decide = Callable[[Record, float, float], str | Hung | None]


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCount:
    """How many jobs of one status a queue holds (a kept count, never a scan). For queued
    jobs also: how many are due, since when the oldest due one has waited (epoch seconds:
    its run_at, or for a job due at once its created_at; None if none is due; read from
    the first due job of each priority, in the claim order), and how many wait for a
    worker that knows their type."""

    queue: str
    status: Status
    count: int
    oldest_due: float | None = None
    due: int = 0
    unknown_type: int = 0


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class CountDrift:
    """A queue and status whose kept count of jobs (what counts and the overview read) is
    not what a scan of the jobs finds: `kept` against `scanned`. The status is as stored
    (a string: a row of a foreign writer may hold any)."""

    queue: str
    status: str
    kept: int
    scanned: int


@dataclasses.dataclass(frozen=True, slots=True)
class JobQuery:
    """A page of a filtered listing, by id: after `after` (ascending) or before `before`
    (descending, newest first)."""

    queue: str | None = None
    status: Status | None = None
    job_type: str | None = None
    error_contains: str | None = None
    finished_since: float | None = None
    after: int = 0
    before: int | None = None
    limit: int = 50


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as it registered, and its last beat (times: the store's clock)."""

    owner: str
    host: str
    pid: int
    queues: tuple[str, ...] | None
    started_at: float
    beat_at: float
    lease: float
    jobs_done: int = 0
    current_job: int | None = None
    rss: int | None = None  # bytes of memory the process used at its last beat
    #: Jobs in flight at its last beat: more than one only with coroutine jobs
    #: (`liteq work --concurrency N`).
    in_flight: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class PoolInfo:
    """An autoscaled pool of one `liteq work` supervisor, as it last reported it (times:
    the store's clock): its worker processes now, its limits and target wait, and its last
    decision as logged ("" while it has taken none) and when."""

    supervisor: str  # the supervisor's identity, host/pid/start/token as a worker's
    name: str
    host: str
    pid: int
    processes: int
    minimum: int
    maximum: int
    target_wait: float
    decision: str = ""
    decided_at: float | None = None
    beat_at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class MinuteCount:
    """The jobs of one queue that completed (in a worker, or resolved from outside one), and
    the attempts that failed, in one minute (epoch seconds // 60)."""

    minute: int
    queue: str
    completed: int
    failed: int


@dataclasses.dataclass(frozen=True, slots=True)
class FileInfo:
    """The file a store keeps its queue in, as an operator sees it: its path, and the size
    of its write-ahead log (`<path>-wal`) in bytes."""

    path: str
    wal_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A periodic job's row (`@store.periodic`): its name, when its slots fall (`spec`, in
    the zone `tz`), its queue, the last slot enqueued or skipped (epoch seconds; slots only
    move forward), the job that slot enqueued (None: skipped, or the schedule's start), and
    when a worker that has it in its code last said so (the store's clock)."""

    name: str
    spec: str
    tz: str
    queue: str
    last_slot: int
    last_job: int | None = None
    seen_at: float = 0.0


#: Per queue: (jobs completed, attempts failed).
Finished = dict[str, tuple[int, int]]


def finished_of(rows: Iterable[MinuteCount], since: float) -> Finished:
    """The counts of the rows whose minute is that of `since` (epoch seconds) or later,
    summed per queue."""
    first = int(since // 60)
    totals: Finished = {}
    for row in rows:
        if row.minute >= first:
            had = totals.get(row.queue, (0, 0))
            totals[row.queue] = (had[0] + row.completed, had[1] + row.failed)
    return totals


#: How the error of a job handed back for a worker that knows its type begins.
WAITS_FOR_ITS_TYPE = "waiting for a worker that knows its type"


@runtime_checkable
class AppStore(Protocol):
    """What an application and a job's own code call: enqueue, read, and change jobs by hand.
    A ManagedJob's `store` is this role only."""

    clock: Callable[[], float]

    def enqueue(self, job: Job, **options: Unpack[EnqueueOptions]) -> ManagedJob: ...
    def enqueue_many(
        self, jobs: Iterable[Job], **options: Unpack[EnqueueOptions]
    ) -> list[ManagedJob]: ...
    def task(
        self, func: Callable[..., Any] | None = None, **options: Unpack[EnqueueOptions]
    ) -> Any: ...
    def get(self, job_id: int) -> ManagedJob: ...
    async def aenqueue(self, job: Job, **options: Unpack[EnqueueOptions]) -> ManagedJob: ...
    async def aget(self, job_id: int) -> ManagedJob: ...
    def get_by_coalesce_id(self, coalesce_id: str) -> ManagedJob | None: ...
    def count(self, queue: str | None = None, status: Status | None = None) -> int: ...
    def jobs(
        self, queue: str | None = None, status: Status | None = None
    ) -> Iterator[ManagedJob]: ...
    def delete(self, job: int | ManagedJob) -> None: ...
    def retry(self, mjob: ManagedJob, *, mulligan: bool = False) -> bool: ...
    def restart(self, mjob: ManagedJob) -> None: ...
    def locked(
        self, job_id: int, lease: float = 60.0
    ) -> contextlib.AbstractContextManager[ManagedJob]: ...
    def apply_async_result(self, mjob: ManagedJob, new: Status) -> Status: ...
    def result(self, job_id: int, timeout: float | None = None) -> Any: ...
    async def aresult(self, job_id: int, timeout: float | None = None) -> Any: ...
    def dependencies(self, job_id: int) -> list[tuple[int, bool]]: ...
    def dependency_results(self, job_id: int) -> dict[int, Any]: ...
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
    ) -> Callable[[Any], Periodic]: ...
    def close(self) -> None: ...


@runtime_checkable
class OperatorStore(AppStore, Protocol):
    """What an operator's tools call (admin, `liteq`, the dashboard), beside what an
    application may: the queue at a glance, bulk deletes, pauses, workers, counts, health."""

    def summary(self) -> list[QueueCount]: ...
    def search(self, query: JobQuery) -> list[ManagedJob]: ...
    def purge(
        self,
        status: Status,
        *,
        queue: str | None = None,
        before: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int: ...
    def detect_hung_jobs(self) -> list[ManagedJob]: ...
    def check_health(self) -> list[str]: ...
    def check_counts(self, *, repair: bool = False) -> list[CountDrift]: ...
    def file_info(self) -> FileInfo | None: ...
    def pause(self, queue: str) -> None: ...
    def resume(self, queue: str) -> None: ...
    def paused(self) -> set[str]: ...
    def workers(self) -> list[WorkerInfo]: ...
    def finished(self, since: float) -> Finished: ...
    def throughput(self, since: float) -> list[MinuteCount]: ...
    def totals(self) -> Finished: ...
    def schedules(self) -> list[ScheduleInfo]: ...
    def pools(self) -> list[PoolInfo]: ...


@runtime_checkable
class WorkerStore(Protocol):
    """What a worker (and the rescue of hung jobs) calls: claims, leases, outcomes, its
    registration, and waiting for work. Every outcome is fenced on its run (id, owner,
    attempt)."""

    clock: Callable[[], float]

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
    def complete_and_claim(
        self,
        done: Sequence[ManagedJob],
        owner: str,
        queues: Sequence[str] | None = None,
        lease: float = 30.0,
        limit: int = 1,
    ) -> tuple[list[LeaseLost], list[ManagedJob]]: ...
    def complete(self, mjob: ManagedJob) -> None: ...
    def complete_many(self, mjobs: Sequence[ManagedJob]) -> list[LeaseLost]: ...
    def renew_lease(self, job: ManagedJob, lease: float = 30.0) -> bool: ...
    def renew_leases(self, jobs: Sequence[ManagedJob], lease: float = 30.0) -> list[ManagedJob]: ...
    def release(
        self, mjobs: Sequence[ManagedJob], *, delay: float = 0.0, error: str | None = None
    ) -> int: ...
    def mark_started(self, mjob: ManagedJob) -> bool: ...
    def held_by(self, owner: str) -> list[ManagedJob]: ...
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
    def crash(self, mjob: ManagedJob, death: str, max_crashes: int) -> Status: ...
    def active(self) -> list[Record]: ...
    def rescue(self, seen: Record, decide: Decide) -> ManagedJob | None: ...
    def register_worker(self, info: WorkerInfo) -> None: ...
    def beat(
        self,
        owner: str,
        *,
        jobs_done: int,
        current_job: int | None,
        finished: Finished,
        rss: int | None = None,
        in_flight: int = 0,
    ) -> None: ...
    def unregister_worker(self, owner: str) -> None: ...
    def report_pools(self, supervisor: str, pools: Sequence[PoolInfo]) -> None: ...
    def wait_for_jobs(self, queues: Sequence[str] | None, timeout: float) -> bool: ...
    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None: ...
    def wake(self) -> None: ...
    def declare_schedules(self, periodics: Sequence[Periodic]) -> None: ...
    def expire_results(self, limit: int = ...) -> int: ...
    def run_schedule(self, periodic: Periodic) -> list[ManagedJob]: ...


@runtime_checkable
class Store(OperatorStore, WorkerStore, Protocol):
    """Where ManagedJobs live; all claiming and locking happen here: every role at once
    (`AppStore`, `WorkerStore`, `OperatorStore`), as each store implements it."""


def start_run(record: Record, now: float, mono: float, owner: str, lease: float) -> Record:
    """What a claim makes of `record` (the caller's own copy), and returns: RUNNING, its
    attempt counted, started now, owned by `owner` and leased for `lease` seconds."""
    record.status = Status.RUNNING
    record.attempts += 1
    record.started_at = now
    record.finished_at = None
    record.owner = owner
    record.lease_until = now + lease
    record.lease_mono = mono + lease
    record.deadline_mono = None if record.max_runtime is None else mono + record.max_runtime
    return record


class Tx(abc.ABC):
    """One write transaction of a backend (see the locking rules above)."""

    __slots__ = ("mono", "now")

    def __init__(self, now: float, mono: float) -> None:
        #: The store's clock, and this host's monotonic clock, when the transaction began.
        self.now = now
        self.mono = mono

    @abc.abstractmethod
    def get(self, job_id: int) -> Record | None:
        """The row with this id, for update; or None."""

    def get_many(self, job_ids: Sequence[int]) -> dict[int, Record]:
        """The rows with these ids (those that exist), for update, locked in id order: two
        writers that lock several rows each this way cannot deadlock on them."""
        found = {}
        for job_id in sorted(set(job_ids)):
            record = self.get(job_id)
            if record is not None:
                found[job_id] = record
        return found

    @abc.abstractmethod
    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        """The row holding this coalesce id (its status is in COALESCE_HOLDING), for
        update; or None."""

    @abc.abstractmethod
    def insert(self, record: Record) -> int | None:
        """Insert (ignoring record.id); return the new id, never one used before, or None
        if the coalesce id is held."""

    def insert_many(self, records: Sequence[Record]) -> list[int | None]:
        """insert() for each record, in order; a backend may batch the statements."""
        return [self.insert(record) for record in records]

    def insert_alike(self, records: Sequence[Record]) -> list[int]:
        """Insert new jobs that differ only in job_type and payload and hold no coalesce
        id; a backend may do it with one statement."""
        ids = self.insert_many(records)
        return [job_id for job_id in ids if job_id is not None]

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
        """Pick the best `limit` due (run_at <= now), unlocked (no lock, or one past its
        lock_until) QUEUED rows of these queues (None: all) that are not paused, best first
        in the claim order: highest priority, then earliest run_at, then lowest id (FIFO).
        Start each as `start_run` says, write that, and return the started records.

        "Unlocked" is about `store.locked()`'s mutex columns; rows other transactions hold
        are skipped as the locking rules above say. The claim order is stated here, and
        once in each backend (MemoryStore's `claim_order`, the `claim_order` block of
        SQLite's queries.sql, the `claim` block of PostgreSQL's), whose claim index follows
        it."""

    @abc.abstractmethod
    def declare_schedule(self, info: ScheduleInfo) -> None:
        """Insert the schedule's row, or set its spec, tz, queue and seen_at; its last_slot
        and last_job stay, but for a spec or tz that changed: then its last_slot becomes
        the later of the two (it never goes back)."""

    @abc.abstractmethod
    def advance_schedule(self, info: ScheduleInfo) -> bool:
        """Make `info.last_slot` the schedule's last slot (its last_job None) only if it is
        later than the row's (inserting the row if there is none), in one conditional
        statement; return whether it did. Two transactions that advance the same schedule
        to the same slot: one does, the other waits for it, then does not."""

    @abc.abstractmethod
    def schedule_job(self, name: str, job_id: int) -> None:
        """Set the job the schedule's last slot enqueued."""

    # Dependencies (`after=`): rows (job_id, after_id, done), kept while the job's row is,
    # found by after_id as its dependencies finish.
    @abc.abstractmethod
    def add_dependencies(self, job_id: int, after: Sequence[tuple[int, bool]]) -> None:
        """Record that job `job_id` runs after each (after_id, done) given, done or not yet
        (a row already there takes the new `done`)."""

    @abc.abstractmethod
    def dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        """Job `job_id`'s dependencies, (after_id, done), by after_id."""

    @abc.abstractmethod
    def dependents(self, after_ids: Sequence[int]) -> list[int]:
        """The jobs with a dependency among `after_ids` not yet done (a job once per row)."""

    @abc.abstractmethod
    def finish_dependencies(self, after_ids: Sequence[int]) -> list[int]:
        """Mark the dependencies on `after_ids` done; return the jobs whose rows changed
        (a job once per row)."""

    def fenced_write_many(self, writes: Sequence[tuple[Record, Changes | None]]) -> list[bool]:
        """fenced_write for many (claimed, changes) pairs; a backend may batch them."""
        return [self.fenced_write(claimed, changes) for claimed, changes in writes]

    def fenced_write(self, claimed: Record, changes: Changes | None) -> bool:
        """Set these columns (or, with None, delete the row) only while the row is still
        `claimed`'s run: RUNNING, same owner, same attempt. Return False, changing
        nothing, otherwise. Only the named columns are written: others (a lock someone
        else took meanwhile, say) stay as they are.

        A backend may do it in one conditional statement; this default reads, then writes.
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


class Backend(abc.ABC):
    """The primitives a store supplies over its jobs; BaseStore builds every rule on them.
    (The workers' registry and counts are a primitive of their own: `registry.Registry`.)"""

    @abc.abstractmethod
    def _transaction(self, prompt: bool = False) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction. `prompt`: a caller waits on it (an enqueue, a change
        made by hand), rather than a worker's own bookkeeping: a backend may favour it."""

    def _insert_one(self, record: Record) -> int:
        """Insert a new job that holds no coalesce id, committed on its own; return its
        id. A backend may do it with less than a transaction."""
        with self._transaction(prompt=True) as tx:
            job_id = tx.insert(record)
        if job_id is None:
            raise RuntimeError(f"job {record.job_type} was not inserted")
        return job_id

    def _insert_alike_alone(self, records: Sequence[Record]) -> list[int] | None:
        """Insert new jobs alike (as Tx.insert_alike takes them: none holds a coalesce
        id) with one statement committed on its own, and return their ids in order; or
        None where the backend cannot (enqueue_many then writes them in a transaction)."""
        return None

    def _complete_and_claim_alone(
        self,
        done: Sequence[Record],
        owner: str,
        queues: Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> list[Record] | None:
        """A worker's steady state with one statement committed on its own, where the
        backend can: complete the claimed runs `done`, whose rows completion deletes
        (their dependents released as `Runs._complete_in` does), then claim as
        `Runs._claim_in` does; return the records claimed, best first. None where it
        cannot, and when a run of `done` is no longer its worker's: then nothing changed,
        and the general path runs (it says why for each job)."""
        return None

    @abc.abstractmethod
    def _read(self, job_id: int) -> Record | None:
        """The row with this id, or None (outside any transaction)."""

    @abc.abstractmethod
    def _read_coalesce(self, coalesce_id: str) -> Record | None:
        """The row holding this coalesce id, or None."""

    @abc.abstractmethod
    def _count(self, queue: str | None, status: Status | None) -> int:
        """How many rows match, from the counts kept per queue and status (in the
        transaction of every insert, delete and change of status), never a scan."""

    @abc.abstractmethod
    def _search(self, query: JobQuery) -> list[Record]:
        """A page of the rows that match `query`, in its order."""

    @abc.abstractmethod
    def _summary(self, now: float) -> list[QueueCount]:
        """Rows per queue and status (from the kept counts, never a scan), with what
        depends on the time for queued ones."""

    @abc.abstractmethod
    def _check_counts(self, repair: bool) -> list[CountDrift]:
        """The kept counts that differ from a scan of the jobs, compared in one snapshot;
        with `repair`, set every count from the scan in the same transaction."""

    @abc.abstractmethod
    def _purge(self, status: Status, queue: str | None, before: float | None, limit: int) -> int:
        """Delete up to `limit` rows of this status (and queue) that finished before
        `before`, in one transaction; return how many."""

    @abc.abstractmethod
    def _set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume a queue (a committed write of its own)."""

    @abc.abstractmethod
    def _paused(self) -> set[str]:
        """The paused queues."""

    @abc.abstractmethod
    def _read_active(self) -> list[Record]:
        """Every RUNNING or WAIT_ASYNC row."""

    @abc.abstractmethod
    def _schedules(self) -> list[ScheduleInfo]:
        """Every schedule's row, by name."""

    @abc.abstractmethod
    def _dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        """Job `job_id`'s dependencies, (after_id, done), by after_id."""

    @abc.abstractmethod
    def _expire_results(self, now: float, limit: int) -> int:
        """In one transaction, up to `limit` completed jobs whose result expired before
        `now`: deleted (their result cleared, for those not deleted on completion); and up
        to `limit` rows of dependencies whose job is gone, deleted. Return how many jobs."""

    @abc.abstractmethod
    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        """The earliest run_at among QUEUED rows in these queues, paused ones left out; or
        None."""
