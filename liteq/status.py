"""Status, and the status machine as data: which change each status allows."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from liteq.errors import InvalidStateChange


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

#: Deaths of the worker running a job (a segfault, os._exit, an OOM or --max-rss kill)
#: after which the job fails for good: each death is a mulligan, and a poison payload
#: must not take down a worker per mulligan up to MULLIGAN_CAP.
DEFAULT_MAX_CRASHES: Final = 3


def check_transition(job_id: int, old: Status, new: Status) -> None:
    """Raise InvalidStateChange unless the machine allows `old` → `new`."""
    if new not in TRANSITIONS[old]:
        raise InvalidStateChange(f"job {job_id} cannot move from {old.value} to {new.value}")
