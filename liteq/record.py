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


#: Column order of Record, which the SQL stores select and insert in.
COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Record))

#: Columns to set on a row, by name.
Changes = dict[str, Any]

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
