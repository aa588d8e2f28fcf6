"""Status hooks, the write that collects the events they are given after its commit, and
the `Announcer` that hands out a store's ManagedJobs and announces its commits."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from liteq.codec import decode
from liteq.errors import LiteqError, UnknownJobType
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.record import Record, evolve
from liteq.status import Status
from liteq.stores.contract import AppStore

if TYPE_CHECKING:
    from liteq.stores.contract import Tx
    from liteq.stores.wakeup import Waker

log = logging.getLogger("liteq.store")

#: A store's hook: (the job after the change, its status before, a message).
StatusHook = Callable[["ManagedJob", Status, str | None], None]
#: A status change to report after commit: (new record, old status, message, decoded job).
Event = tuple[Record, Status, str | None, Job | None]


def listens(job: Job | None) -> bool:
    """Whether a job's class has a status hook (None: it cannot be decoded; the store's
    hook still runs for it)."""
    return job is None or listens_to(type(job))


def any_listens(jobs: Iterable[Job | None]) -> bool:
    """Whether any of `jobs` listens, each class asked once (a batch's jobs are most
    often of a few classes)."""
    return any(map(listens, {type(job): job for job in jobs}.values()))


def listens_to(cls: type[Job]) -> bool:
    """Whether a job class has a status hook."""
    return cls.status_did_change is not Job.status_did_change


class Write:
    """A write transaction and the status events it makes, handed to `committed` once it
    has committed (the store then wakes its waiting workers and runs the hooks)."""

    __slots__ = ("_committed", "_inner", "events", "tx")

    def __init__(
        self,
        inner: contextlib.AbstractContextManager[Tx],
        committed: Callable[[list[Event]], None],
    ) -> None:
        self._inner = inner
        self._committed = committed
        self.events: list[Event] = []

    def __enter__(self) -> Write:
        self.tx = self._inner.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        suppressed = self._inner.__exit__(kind, exc, tb)
        if kind is None:  # committed
            self._committed(self.events)
        return suppressed


class Hooked(AppStore, Protocol):
    """What an Announcer needs of its store: the app's role, and the store's own hook, as a
    subclass overrides it or a caller passes (or later sets) `on_status_change`."""

    on_status_change: StatusHook | None

    def status_did_change(
        self, job: ManagedJob, old_status: Status, message: str | None
    ) -> None: ...


class Announcer:
    """A store's ManagedJobs, and what follows each of its commits: its idle workers in
    this process woken, then the status hooks run (the job's, then the store's).

    `overridden`: whether the store's class overrides `status_did_change`. The store is
    held by a weak reference: a store no one holds any more goes at once (and a backend's
    connections with it), as it would without its announcer."""

    __slots__ = ("_overridden", "_store", "_waker")

    def __init__(self, store: Hooked, waker: Waker, overridden: bool) -> None:
        self._store: Callable[[], Hooked | None] = weakref.ref(store)
        self._waker = waker
        self._overridden = overridden

    def listening(self) -> bool:
        """Whether the store itself has a status hook."""
        if self._overridden:
            return True
        store = self._store()
        return store is not None and store.on_status_change is not None

    def managed(
        self,
        record: Record,
        job: Job | None = None,
        claimed: bool = False,
        lock_token: str | None = None,
    ) -> ManagedJob:
        """A ManagedJob of the store for `record` (its job decoded from the payload unless
        given; a payload that cannot be decoded makes a job whose `error` says why)."""
        error = None
        unknown = False
        if job is None:
            try:
                job = decode(record.payload)
            except LiteqError as exc:
                error, unknown = str(exc), isinstance(exc, UnknownJobType)
        store = self._store()
        if store is None:
            raise _gone()
        return ManagedJob(store, record, job, error, lock_token, claimed, unknown)

    def committed(self, events: list[Event]) -> None:
        """After a commit: wake this process's waiting workers, run the hooks."""
        self._waker.ring()
        if events:
            self.fire(events)

    def fire(self, events: list[Event]) -> None:
        """Run the hooks of events already committed; one that raises is logged."""
        store = self._store()
        if store is None:
            raise _gone()
        store_listens = self._overridden or store.on_status_change is not None
        for record, old, message, job in events:
            if not (store_listens or listens(job)):
                continue
            mjob = self.managed(evolve(record), job)  # its own copy, whatever it does later
            if mjob.job is not None:
                try:
                    mjob.job.status_did_change(mjob, old, message)
                except Exception:
                    log.exception("status_did_change of job %d raised", record.id)
            try:
                store.status_did_change(mjob, old, message)
            except Exception:
                log.exception("the store's status hook raised for job %d", record.id)


def _gone() -> LiteqError:
    # (Only a store calls its announcer, so it lives while it does.)
    return LiteqError("the store of this announcer is gone")
