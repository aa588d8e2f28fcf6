"""Record: one job as a store keeps it, a row of plain values."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Final

from liteq.status import Status


@dataclasses.dataclass(slots=True)
class Record:
    """One stored row. Times are epoch seconds of the store's clock."""

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
    #: worker on that host is judged by them, as no wall-clock step can move them.
    lease_mono: float | None = None
    deadline_mono: float | None = None
    #: How many times a worker died while running it (see DEFAULT_MAX_CRASHES). Last, with
    #: a default, so that code building a Record by position need not name it.
    crashes: int = 0


#: Column order of Record, which the SQL stores select and insert in.
COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Record))

#: Columns to set on a row, by name.
Changes = dict[str, Any]

#: The run_at of a job due as soon as it is queued (no delay, a mulligan, a restart): not
#: the wall clock, so a clock that was fast delays nothing and one stepped back reorders
#: nothing; such jobs run in id (FIFO) order. Only delays and backoffs read the clock.
#: Below any time an option can give (those start at 1970), so it means only this.
DUE_AT_ONCE: Final = -1.0


def due_since(run_at: float, created_at: float) -> float:
    """Since when a due job has waited: not before it was enqueued."""
    return max(run_at, created_at)


#: The columns of a job that no worker holds.
UNOWNED: Final[Changes] = {
    "owner": None,
    "lease_until": None,
    "lease_mono": None,
    "deadline_mono": None,
}

_fields = operator.attrgetter(*COLUMNS)


def evolve(record: Record, **changes: object) -> Record:
    """A copy of `record` with `changes`: dataclasses.replace, without its cost on hot paths."""
    copy = Record(*_fields(record))
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy
