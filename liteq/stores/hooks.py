"""Status hooks, and the write that collects the events they are given after its commit."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from liteq.job import Job
from liteq.record import Record
from liteq.status import Status

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.stores.contract import Tx

#: A store's hook: (the job after the change, its status before, a message).
StatusHook = Callable[["ManagedJob", Status, str | None], None]
#: A status change to report after commit: (new record, old status, message, decoded job).
Event = tuple[Record, Status, str | None, Job | None]


def listens(job: Job | None) -> bool:
    """Whether a job's class has a status hook (None: it cannot be decoded; the store's
    hook still runs for it)."""
    return job is None or type(job).status_did_change is not Job.status_did_change


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
