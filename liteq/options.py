"""Enqueue options: their names, their validation, and the row they make."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, TypedDict

from liteq.codec import HowToEncode, encode_all, encode_as, how_to_encode
from liteq.job import Job
from liteq.record import COLUMNS, DEFAULTS, DUE_AT_ONCE, Record, with_payloads
from liteq.status import Status


class EnqueueOptions(TypedDict, total=False):
    """Options of `store.enqueue`; see the README's options table."""

    queue: str
    priority: int
    max_attempts: int
    run_at: datetime | float | None
    delay: float | timedelta | None
    coalesce_id: str | None
    max_runtime: float | None
    delete_on_complete: bool
    keep_result: bool | float | timedelta | None
    after: Iterable[Any]


_OPTION_NAMES = frozenset(EnqueueOptions.__annotations__)
DEFAULT_QUEUE = "default"

#: What every store can hold: a 64-bit integer (SQLite's and PostgreSQL's)...
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: ... and a time a datetime can show: 1970-01-01 to 9999-12-31 UTC, in epoch seconds.
LATEST: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
#: The longest max_runtime: a worker times a job with an interval timer, which has bounds.
MAX_RUNTIME: Final = 1e9
#: How long `keep_result=True` keeps a result: a day.
DEFAULT_KEEP_RESULT: Final = 86400.0
#: The longest keep_result: about a hundred years.
MAX_KEEP_RESULT: Final = 3.2e9


def check_text(value: object, name: str) -> str:
    """`value` if it is a string every store can store (valid Unicode); TypeError or
    ValueError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{name} must be valid Unicode text, not {value!r} (it holds a lone surrogate)"
        ) from None
    if "\x00" in value:  # PostgreSQL's text cannot hold one
        raise ValueError(f"{name} must not hold a NUL character, not {value!r}")
    return value


def storable(text: str) -> str:
    """Text from outside liteq (an exception's message, a traceback) made storable in every
    store: a lone surrogate (a file name decoded with surrogateescape, say) and NUL become
    visible escapes instead of making the write fail."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _int64(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in 64 bits (-2**63 to 2**63-1), not {value!r}")
    return value


def _in_range(due: float, name: str) -> float:
    if not 0 <= due <= LATEST:
        raise ValueError(
            f"{name} must fall between 1970-01-01 and 9999-12-31 UTC, not {due!r} epoch seconds"
        )
    return due


def _epoch(value: datetime | float | int, name: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)); "
                "a naive datetime is ambiguous"
            )
        return _in_range(value.timestamp(), name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be an aware datetime or epoch seconds, not {value!r}")
    return _in_range(float(value), name)


def _seconds(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(
            f"{name} must be {'positive' if positive else 'zero or more'}, not {value!r}"
        )
    return float(value)


#: The columns of a new job that its options set (_new_row), and that differ per job
#: (_new_record): where a row's values (COLUMNS order) hold them.
_BY_OPTIONS: Final = (
    "queue",
    "priority",
    "max_attempts",
    "run_at",
    "max_runtime",
    "delete_on_complete",
    "keep_result",
)
_PER_JOB: Final = ("job_type", "payload", "created_at", "coalesce_id")
_QUEUE, _PRIORITY, _MAX_ATTEMPTS, _RUN_AT, _MAX_RUNTIME, _DELETE_ON_COMPLETE, _KEEP_RESULT = map(
    COLUMNS.index, _BY_OPTIONS
)
_JOB_TYPE, _PAYLOAD, _CREATED_AT, _COALESCE_ID = map(COLUMNS.index, _PER_JOB)


def _values(**columns: Any) -> list[Any]:
    """A row's values in COLUMNS order (what Record(*values) takes), given by column name;
    a column not given holds Record's default. TypeError if it has none."""
    missing = [c for c in COLUMNS if c not in columns and c not in DEFAULTS]
    if missing:
        raise TypeError(f"a new job holds what in column(s) {', '.join(missing)}?")
    return [columns[c] if c in columns else DEFAULTS[c] for c in COLUMNS]


#: A new job's values, but for those _new_row and _new_record set.
_NEW_JOB: Final = _values(
    id=0,  # (the store gives it)
    status=Status.QUEUED,
    attempts=0,
    started_at=None,
    finished_at=None,
    error=None,
    traceback=None,
    owner=None,
    lease_until=None,
    lock_token=None,
    lock_until=None,
    **dict.fromkeys(_BY_OPTIONS + _PER_JOB),
)


class _Resolved(NamedTuple):
    coalesce_given: bool
    coalesce_id: object
    #: A new job's values with these options (_new_row); _new_record copies it per job.
    row: list[Any]


def _new_row(
    queue: str,
    priority: int,
    max_attempts: int,
    run_at: float,
    max_runtime: float | None,
    delete_on_complete: bool,
    keep_result: float | None,
) -> list[Any]:
    row = _NEW_JOB.copy()
    row[_QUEUE] = queue
    row[_PRIORITY] = priority
    row[_MAX_ATTEMPTS] = max_attempts
    row[_RUN_AT] = run_at
    row[_MAX_RUNTIME] = max_runtime
    row[_DELETE_ON_COMPLETE] = delete_on_complete
    row[_KEEP_RESULT] = keep_result
    return row


def _check_names(options: dict[str, Any] | EnqueueOptions) -> None:
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unknown enqueue option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_OPTION_NAMES))}"
        )


def _resolve(opts: dict[str, Any], explicit: EnqueueOptions, now: float) -> _Resolved:
    """Validate merged options (explicit ones win over the job's); raise TypeError/ValueError."""
    queue = opts.get("queue")
    if queue is None:
        queue = DEFAULT_QUEUE
    elif not check_text(queue, "queue").strip():
        raise ValueError(
            f"queue must be a name, not the empty string or spaces ({queue!r}); "
            "leave it out for the default queue"
        )
    priority = _int64(opts.get("priority", 0), "priority")
    max_attempts = opts.get("max_attempts", 1)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int of at least 1, not {max_attempts!r}")
    _int64(max_attempts, "max_attempts")
    run_at, delay = opts.get("run_at"), opts.get("delay")
    explicit_run_at = explicit.get("run_at") is not None
    if explicit_run_at and explicit.get("delay") is not None:
        raise ValueError("give run_at or delay, not both")
    if delay is not None and not explicit_run_at:
        seconds = _seconds(delay, "delay", positive=False)
        due = _in_range(now + seconds, "now + delay") if seconds else DUE_AT_ONCE
    elif run_at is not None:
        due = _epoch(run_at, "run_at")
    else:
        due = DUE_AT_ONCE
    max_runtime = opts.get("max_runtime")
    if max_runtime is not None:
        max_runtime = _seconds(max_runtime, "max_runtime", positive=True)
        if max_runtime > MAX_RUNTIME:
            raise ValueError(f"max_runtime must be at most {MAX_RUNTIME:.0e} seconds")
    delete_on_complete = opts.get("delete_on_complete", True)
    if not isinstance(delete_on_complete, bool):
        raise TypeError(f"delete_on_complete must be a bool, not {delete_on_complete!r}")
    if "after" in opts:
        raise TypeError(
            "after= is an option of one enqueue call (store.enqueue(job, after=[...])), "
            "not of a job class or a task"
        )
    return _Resolved(
        "coalesce_id" in opts,
        opts.get("coalesce_id"),
        _new_row(
            queue,
            priority,
            max_attempts,
            due,
            max_runtime,
            delete_on_complete,
            keep_result_seconds(opts.get("keep_result")),
        ),
    )


def keep_result_seconds(value: object) -> float | None:
    """keep_result as seconds (True: DEFAULT_KEEP_RESULT; None or False: no result kept);
    TypeError or ValueError for anything else."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_KEEP_RESULT
    seconds = _seconds(value, "keep_result", positive=True)
    if seconds > MAX_KEEP_RESULT:
        raise ValueError(f"keep_result must be at most {MAX_KEEP_RESULT:.1e} seconds")
    return seconds


#: What no options resolve to.
_DEFAULTS = _resolve({}, {}, 0.0)


def build_records(
    jobs: Sequence[Job], options: EnqueueOptions, now: float
) -> tuple[list[Record], bool]:
    """Validate the options and encode each job: the rows to insert, and whether they are
    uniform (they differ only in job_type and payload: the same options, no coalesce id;
    a store may insert such rows with one statement).

    Raises TypeError (unencodable state, bad option type) or ValueError (bad option value)
    before anything is written. Options the call gives are checked once, not per job.
    """
    if options:
        _check_names(options)
    if jobs and options.get("coalesce_id") is None:
        cls = type(jobs[0])
        if _gives_nothing(cls) and len(set(map(type, jobs))) == 1:
            return _records_of_one_class(jobs, cls, options, now), True
    uniform = True
    shared = None if options else _DEFAULTS  # (no options, the common call: nothing to check)
    records = []
    last_cls: type | None = None
    how: HowToEncode = ("", "", True, False, frozenset())
    for job in jobs:
        cls = type(job)
        if cls is not last_cls:  # (a batch is most often of one class)
            how, last_cls = how_to_encode(cls), cls
        job_type, payload = encode_as(job, how)
        if cls.enqueue_options is Job.enqueue_options and cls.keep_result is None:
            if shared is None:
                shared = _resolve(dict(options), options, now)
            r = shared
        else:
            defaults = job.enqueue_options()
            _check_names(defaults)
            if cls.keep_result is not None and "keep_result" not in defaults:
                defaults = {**defaults, "keep_result": cls.keep_result}
            r = _resolve({**defaults, **options}, options, now)
            uniform = False
        if r.coalesce_given:
            coalesce_id = r.coalesce_id
        else:
            coalesce_id = None if cls.coalesce_id is Job.coalesce_id else job.coalesce_id()
        if coalesce_id is not None:
            coalesce_id = check_text(coalesce_id, "coalesce_id")
            uniform = False
        records.append(_new_record(job_type, payload, r, now, coalesce_id))
    return records, uniform


def _gives_nothing(cls: type) -> bool:
    """Whether a job class gives no enqueue options of its own, no keep_result and no
    coalesce id: its jobs take the call's options alone."""
    return (
        issubclass(cls, Job)
        and cls.enqueue_options is Job.enqueue_options
        and cls.keep_result is None
        and cls.coalesce_id is Job.coalesce_id
    )


def _records_of_one_class(
    jobs: Sequence[Job], cls: type, options: EnqueueOptions, now: float
) -> list[Record]:
    """build_records' rows for jobs all of one class that gives nothing (_gives_nothing),
    checked in the same order: each job's state, the call's options after the first."""
    how = how_to_encode(cls)
    payloads = encode_all(jobs[:1], how)
    r = _resolve(dict(options), options, now) if options else _DEFAULTS
    payloads += encode_all(jobs[1:], how)
    row = r.row.copy()
    row[_JOB_TYPE] = how[0]
    row[_CREATED_AT] = now
    return with_payloads(Record(*row), payloads)


def build_record(job: Job, options: EnqueueOptions, now: float) -> Record:
    """build_records((job,), options, now)'s one row; shorter for the most common call: no
    options, and a job class that gives none and no coalesce id."""
    cls = type(job)
    how = how_to_encode(cls)  # (first: TypeError if it is no Job)
    if (
        options
        or cls.enqueue_options is not Job.enqueue_options
        or cls.coalesce_id is not Job.coalesce_id
        or cls.keep_result is not None
    ):
        return build_records((job,), options, now)[0][0]
    job_type, payload = encode_as(job, how)
    return _new_record(job_type, payload, _DEFAULTS, now, None)


def _new_record(
    job_type: str, payload: str, r: _Resolved, now: float, coalesce_id: str | None
) -> Record:
    row = r.row.copy()
    row[_JOB_TYPE] = job_type
    row[_PAYLOAD] = payload
    row[_CREATED_AT] = now
    row[_COALESCE_ID] = coalesce_id
    return Record(*row)
