"""enqueued: the jobs waiting in a store, for a test to assert on without running them."""

from __future__ import annotations

from liteq.errors import PayloadError
from liteq.job import type_name
from liteq.managed import ManagedJob
from liteq.status import Status
from liteq.stores.contract import JobQuery, Store
from liteq.task import Task

#: Jobs read per page.
_PAGE = 500


def enqueued(
    store: Store, job_type: str | type | Task[..., object] | None = None, queue: str | None = None
) -> list[ManagedJob]:
    """The QUEUED jobs of `store` (due now or later), oldest first, each decoded from its
    stored payload as a worker would decode it; none of them runs.

    `job_type` narrows to one type: a Job class, a `@store.task` function, or a stored
    type name (`"myapp.jobs.SendMail"`); `queue` to one queue. PayloadError if a job's
    payload cannot be decoded here.

        signup("ann@example.com")
        [mail] = enqueued(store, send_welcome)
        assert mail.job.args == ["ann@example.com"]
    """
    name = _name(job_type)
    found: list[ManagedJob] = []
    after = 0
    while True:
        page = store.search(
            JobQuery(queue=queue, status=Status.QUEUED, job_type=name, after=after, limit=_PAGE)
        )
        found += page
        if len(page) < _PAGE:
            break
        after = page[-1].id
    for mjob in found:
        if mjob.job is None:
            raise PayloadError(f"job {mjob.id} cannot be decoded here: {mjob.decode_error}")
    return found


def _name(job_type: str | type | Task[..., object] | None) -> str | None:
    if job_type is None or isinstance(job_type, str):
        return job_type
    if isinstance(job_type, Task):
        return type_name(job_type.job_class)
    if isinstance(job_type, type):
        return type_name(job_type)
    raise TypeError(
        f"job_type is a Job class, a @store.task function or a type name, not {job_type!r}"
    )
