"""eager: every enqueue on a store runs its job at once, in the caller, as a worker would."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

from liteq.errors import JobNotFound, LiteqError
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.record import evolve
from liteq.status import Status
from liteq.stores.contract import Store
from liteq.testing.drain import drain

#: How deep jobs may enqueue jobs that run at once (each level runs inside the one above).
MAX_DEPTH: Final = 20
#: The methods eager mode replaces on the store object.
_REPLACED: Final = ("enqueue", "enqueue_many", "aenqueue")

#: The stores in eager mode now, by id (one eager block per store at a time).
_active: set[int] = set()
_active_lock = threading.Lock()
#: The eager sessions whose job runs in this context (a job's own enqueues are nested, not
#: concurrent): set around each run, and seen by a coroutine job too (its task copies it).
_running: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "liteq_eager_running", default=()
)


@contextlib.contextmanager
def eager(store: Store) -> Iterator[Store]:
    """Within the block, every enqueue on `store` (`enqueue`, `enqueue_many`, `aenqueue`,
    and so a task's `enqueue`) runs the job at once, in the caller, and returns its
    ManagedJob as it is on file afterwards (one deleted on completion, the default: as
    enqueued, its status COMPLETED).

    The job is really enqueued (the same checks: an argument production would refuse is
    refused here, with the same error), then run by `drain(store, queues=[its queue])`: decoded
    from its stored payload, through the status machine and hooks. The exception a job
    raises is raised by the enqueue that ran it, its failure recorded (see `drain`). A job
    enqueued with a delay or a `run_at` to come stays queued, as it would in production:
    move the clock and `drain`. Due jobs already waiting in that queue run too, first
    (in the claim order), as a worker would run them.

    LiteqError for a second eager block on the same store (nested, or from another
    thread), and for an enqueue from one thread while a job enqueued from another is
    running; a job's own enqueues run at once, nested, up to MAX_DEPTH deep.

        with eager(store):
            signup("ann@example.com")      # the welcome mail is sent before this returns
    """
    with _active_lock:
        if id(store) in _active:
            raise LiteqError(
                "eager(store) is already on for this store (a nested eager block, or one "
                "in another thread): use one eager block per store at a time"
            )
        _active.add(id(store))
    session = _Session(store)
    own = vars(store)
    saved: dict[str, Any] = {name: own[name] for name in _REPLACED if name in own}
    try:
        setattr(store, "enqueue", session.enqueue)  # noqa: B010 - replaces a method on the instance
        setattr(store, "enqueue_many", session.enqueue_many)  # noqa: B010 - as above
        if hasattr(store, "aenqueue"):
            setattr(store, "aenqueue", session.aenqueue)  # noqa: B010 - as above
        yield store
    finally:
        for name in _REPLACED:
            own.pop(name, None)
        own.update(saved)
        with _active_lock:
            _active.discard(id(store))


class _Session:
    """One eager block on one store: its store's own enqueues, and the runs they make."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._enqueue = store.enqueue
        self._enqueue_many = store.enqueue_many
        self._busy = threading.Lock()

    def enqueue(self, job: Job, **options: Any) -> ManagedJob:
        with self._turn():
            mjob = self._enqueue(job, **options)
            drain(self.store, queues=[mjob.queue])
        return self._now(mjob)

    def enqueue_many(self, jobs: Iterable[Job], **options: Any) -> list[ManagedJob]:
        with self._turn():
            mjobs = self._enqueue_many(jobs, **options)
            if mjobs:
                drain(self.store, queues=sorted({m.queue for m in mjobs}))
        return [self._now(m) for m in mjobs]

    async def aenqueue(self, job: Job, **options: Any) -> ManagedJob:
        # In the caller's thread, as a test wants it: its event loop waits for the job.
        return self.enqueue(job, **options)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This caller's turn to enqueue and run: LiteqError, before anything is written,
        if another thread's run is under way (a job's own enqueue is nested in its run)."""
        running = _running.get()
        me = id(self)
        nested = me in running
        if nested:
            if running.count(me) >= MAX_DEPTH:
                raise LiteqError(
                    f"eager: jobs enqueued jobs {MAX_DEPTH} deep, each run at once inside "
                    "the one that enqueued it: does a job enqueue itself forever? Test it "
                    "with drain(store, max_jobs=...) instead"
                )
        elif not self._busy.acquire(blocking=False):
            raise LiteqError(
                "eager: an enqueue from this thread while a job enqueued from another thread "
                "is running: eager mode runs one job at a time, in the thread that enqueues "
                "it; enqueue from one thread at a time, or drop eager and drain(store)"
            )
        token = _running.set((*running, me))
        try:
            yield
        finally:
            _running.reset(token)
            if not nested:
                self._busy.release()

    def _now(self, mjob: ManagedJob) -> ManagedJob:
        """The job as it is on file after its run; one deleted on completion (the
        default) as enqueued, but COMPLETED."""
        try:
            return self.store.get(mjob.id)
        except JobNotFound:
            mjob.replace_record(evolve(mjob.record, status=Status.COMPLETED))
            return mjob
