"""drain: run every due job in this process, as a worker would, until none is due."""

from __future__ import annotations

from collections.abc import Sequence

from liteq.errors import LiteqError, StoreError
from liteq.managed import ManagedJob, describe
from liteq.stores.contract import Store
from liteq.worker.exits import EXIT_OK
from liteq.worker.loop import Worker


def drain(
    store: Store,
    *,
    raise_errors: bool = True,
    max_jobs: int = 10_000,
    queues: Sequence[str] | None = None,
) -> int:
    """Run every job of `store` that is due now (in `queues`, default all), in this process,
    until none is; return how many ran.

    A real `Worker` runs them, one at a time: each is decoded from its stored payload and
    goes through the status machine, its hooks, retries, coalescing and `WAIT_ASYNC` as in
    production; a coroutine job (`async def`) runs on the worker's event loop. A job that a
    job enqueues and that is due now runs too. A delayed job, or a retry's backoff, is due
    once the store's clock reaches it (`Clock.advance`).

    With `raise_errors`, the first exception a job raises stops the drain and is raised
    here, once its failure is recorded (the job is re-queued while attempts remain, else
    FAILED), with a note naming the job: so a broken job fails the test that enqueued it.
    LiteqError if `max_jobs` jobs ran and jobs are still due (a job that enqueues itself
    forever, say). A job whose run returned something it may not (not None nor a Status)
    is recorded FAILED without raising: read its status to check.

        signup("ann@example.com")          # enqueues a welcome mail
        assert drain(store) == 1
    """
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
        raise ValueError(f"max_jobs must be an int of at least 1, not {max_jobs!r}")
    worker = Worker(
        store,
        queues=queues,
        exit_if_no_jobs=True,
        exit_after_n_jobs=max_jobs,
        jitter=False,
        check_code=False,
        check_health=False,
        handle_signals=False,
        guarantee_memory=0,  # a test's drain never stops for the host's free memory
        concurrency=1,  # one job at a time, in the order a worker claims them
        prefetch=1,  # each claim the best job due now, as a job enqueued meanwhile may be
    )
    first: list[tuple[ManagedJob, BaseException]] = []

    def raised(mjob: ManagedJob, exc: BaseException) -> None:
        if raise_errors and not first:
            first.append((mjob, exc))
            worker.stop()

    status = worker.start(raised=raised)
    if first:
        mjob, exc = first[0]
        exc.add_note(
            f"liteq: raised by job {mjob.id} ({describe(mjob)}) on attempt {mjob.attempts} "
            f"of {mjob.max_attempts}; recorded as {mjob.status.value}"
        )
        raise exc
    if status != EXIT_OK:
        raise StoreError(f"drain stopped: the worker exited with status {status} (see the log)")
    ran = worker.jobs_processed
    if ran >= max_jobs and due_now(store, queues):
        raise LiteqError(
            f"drain ran max_jobs={max_jobs} jobs and jobs are still due: does a job enqueue "
            "itself (or do jobs enqueue each other) forever? Pass a larger max_jobs if the "
            "queue really holds more"
        )
    return ran


def due_now(store: Store, queues: Sequence[str] | None = None) -> bool:
    """Whether a job in `queues` (default all; paused queues aside) is due now."""
    due = store.next_run_at(queues)
    return due is not None and due <= store.clock()
