"""Record: one job as a store keeps it, a row of plain values."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable
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
    #: How many times a worker died while running it (see DEFAULT_MAX_CRASHES).
    crashes: int = 0
    #: keep_result: the run's return value as JSON text once it completed (None: none kept).
    result: str | None = None
    #: Seconds a completed job's result is kept (None: no result is kept).
    keep_result: float | None = None
    #: When the result expires and the job is purged (the store's clock), once completed.
    expires_at: float | None = None


#: Record's columns. A store writes and reads each by its name; a row's values in this
#: order are what Record(*values) takes (every field is a positional parameter, in field
#: order: tests/test_columns.py checks it), so values selected as COLUMNS build a Record.
COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Record))
#: Every column but the id, which a store gives a new row.
COLUMNS_BUT_ID: Final = tuple(c for c in COLUMNS if c != "id")
#: The default of each column that has one (a new job holds it unless options.py sets it).
DEFAULTS: Final[dict[str, Any]] = {
    f.name: f.default for f in dataclasses.fields(Record) if f.default is not dataclasses.MISSING
}

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


#: A job that waits for its dependencies (`after=`) is QUEUED with its run_at moved past
#: any time an option can give (options.LATEST, in 9999) by this much: no claim, no index
#: and no due count sees it, and its own run_at comes back when its last dependency
#: completes (a float keeps it to a fraction of a millisecond).
WAITING: Final = 1e12


def held(run_at: float) -> float:
    """The run_at of a job that waits for its dependencies, its own being `run_at`."""
    return WAITING + run_at


def own_run_at(run_at: float) -> float:
    """A job's own run_at: its stored one, unless it waits for dependencies."""
    return run_at - WAITING if run_at >= WAITING - 2 else run_at


def waits(record: Record) -> bool:
    """Whether a QUEUED job waits for dependencies to complete."""
    return record.status is Status.QUEUED and record.run_at >= WAITING - 2


#: The columns of a job that no worker holds.
UNOWNED: Final[Changes] = {
    "owner": None,
    "lease_until": None,
    "lease_mono": None,
    "deadline_mono": None,
}

#: A record's values in COLUMNS order (a Status binds as its text: it is a str).
values_of: Final[Callable[[Record], tuple[Any, ...]]] = operator.attrgetter(*COLUMNS)


def _copier() -> Callable[[Record, Iterable[str]], list[Record]]:
    """with_payloads, written out for Record's fields (as dataclasses writes __init__)."""
    values = {c: "payload" if c == "payload" else f"v_{c}" for c in COLUMNS}
    lines = [
        "def with_payloads(template, payloads):",
        "    new = object.__new__",
        f"    {', '.join(f'v_{c}' for c in COLUMNS)}, = values_of(template)",
        "    copies = []",
        "    for payload in payloads:",
        "        r = new(Record)",
        *(f"        r.{c} = {v}" for c, v in values.items()),
        "        copies.append(r)",
        "    return copies",
    ]
    scope: dict[str, Any] = {"Record": Record, "values_of": values_of}
    exec("\n".join(lines), scope)  # noqa: S102 - source made here from Record's field names
    copier: Callable[[Record, Iterable[str]], list[Record]] = scope["with_payloads"]
    return copier


#: Copies of a template Record, one per payload, each holding its payload (a batch of new
#: jobs alike). The same Records as Record(*values) would make, at a third of the cost:
#: calling Record's __init__ with its 28 arguments costs more than storing the fields.
with_payloads: Final = _copier()


def evolve(record: Record, **changes: object) -> Record:
    """A copy of `record` with `changes`: dataclasses.replace, without its cost on hot paths."""
    copy = Record(*values_of(record))
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy
