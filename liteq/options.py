"""Enqueue options: their names, their validation, and the row they make."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, TypedDict

from liteq.job import Job, encode
from liteq.managed import Record, Status


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


_OPTION_NAMES = frozenset(EnqueueOptions.__annotations__)
DEFAULT_QUEUE = "default"


def _epoch(value: datetime | float | int, name: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)); "
                "a naive datetime is ambiguous"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be an aware datetime or epoch seconds, not {value!r}")
    return float(value)


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


def build_record(job: Job, options: EnqueueOptions, now: float) -> Record:
    """Validate the options and encode the job: the row to insert (TypeError/ValueError if bad)."""
    job_type, payload = encode(job)
    unknown = set(options) - _OPTION_NAMES
    defaults = job.enqueue_options()
    unknown |= set(defaults) - _OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unknown enqueue option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_OPTION_NAMES))}"
        )
    opts: dict[str, Any] = {**defaults, **options}

    queue = opts.get("queue") or DEFAULT_QUEUE
    if not isinstance(queue, str):
        raise TypeError(f"queue must be a string, not {queue!r}")
    priority = opts.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {priority!r}")
    max_attempts = opts.get("max_attempts", 1)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int of at least 1, not {max_attempts!r}")
    run_at, delay = opts.get("run_at"), opts.get("delay")
    if "run_at" in options and "delay" in options and run_at is not None and delay is not None:
        raise ValueError("give run_at or delay, not both")
    if delay is not None and not ("run_at" in options and run_at is not None):
        due = now + _seconds(delay, "delay", positive=False)
    elif run_at is not None:
        due = _epoch(run_at, "run_at")
    else:
        due = now
    coalesce_id = opts["coalesce_id"] if "coalesce_id" in opts else job.coalesce_id()
    if coalesce_id is not None and not isinstance(coalesce_id, str):
        raise TypeError(f"coalesce_id must be a string or None, not {coalesce_id!r}")
    max_runtime = opts.get("max_runtime")
    if max_runtime is not None:
        max_runtime = _seconds(max_runtime, "max_runtime", positive=True)
    delete_on_complete = opts.get("delete_on_complete", True)
    if not isinstance(delete_on_complete, bool):
        raise TypeError(f"delete_on_complete must be a bool, not {delete_on_complete!r}")
    return Record(
        id=0,
        job_type=job_type,
        payload=payload,
        queue=queue,
        priority=priority,
        status=Status.QUEUED,
        attempts=0,
        max_attempts=max_attempts,
        run_at=due,
        created_at=now,
        started_at=None,
        finished_at=None,
        coalesce_id=coalesce_id,
        max_runtime=max_runtime,
        delete_on_complete=delete_on_complete,
        error=None,
        traceback=None,
        owner=None,
        lease_until=None,
        lock_token=None,
        lock_until=None,
    )
