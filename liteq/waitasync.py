"""Finishing WAIT_ASYNC jobs from a callback."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from liteq.errors import InvalidState, InvalidStateChange, PayloadError
from liteq.status import Status

if TYPE_CHECKING:
    from liteq.stores.contract import Store

_RESULTS = frozenset({Status.COMPLETED, Status.FAILED, Status.QUEUED, Status.WAIT_ASYNC})


def resolve_wait_async(
    store: Store, job_id: int, data: Any, convert_exceptions: bool = False
) -> Status:
    """Finish an async job: lock it, call `job.resolve_wait_async(data)`, apply the Status it returns.

    Returns the job's status afterwards. Raises InvalidState if the job is not WAIT_ASYNC,
    JobLocked if it is locked, JobNotFound if missing. If the job's method raises, the
    exception propagates and the job stays WAIT_ASYNC; with convert_exceptions=True the
    job is failed instead (retried if attempts remain).

        # in the web handler of a transcoding service's callback:
        liteq.resolve_wait_async(store, job_id, request.json)
    """
    with store.locked(job_id) as mjob:
        if mjob.status is not Status.WAIT_ASYNC:
            raise InvalidState(f"job {job_id} is {mjob.status.value}, not wait_async")
        try:
            if mjob.job is None:
                raise PayloadError(f"job {job_id} cannot be resolved: {mjob.decode_error}")
            result = mjob.job.resolve_wait_async(data)
            if result not in _RESULTS:
                raise InvalidStateChange(
                    f"resolve_wait_async of job {job_id} returned {result!r}; return "
                    "Status.COMPLETED, FAILED, QUEUED (run again) or WAIT_ASYNC (keep waiting)"
                )
        except Exception as exc:
            if not convert_exceptions:
                raise
            return store.fail(mjob, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return store.apply_async_result(mjob, Status(result))
