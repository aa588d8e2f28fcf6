"""Jobs finished outside a worker count where they finish, on every store.

Workers tell the per-minute counts and the totals what they finished at their beats; a job
resolved by resolve_wait_async (a web handler, `liteq resolve`, the dashboard) has no
worker to tell for it. The counts must still match the jobs the store holds.
"""

from __future__ import annotations

import pytest

import liteq
from liteq.stores.contract import WorkerInfo
from tests.conftest import OWNER, Clock
from tests.jobs import Waits


def waiting(store: liteq.stores.BaseStore, queue: str, **options: object) -> int:
    """A job left WAIT_ASYNC by its run, as a worker leaves it; its id."""
    job = store.enqueue(Waits(queue), queue=queue, **options)  # type: ignore[arg-type]
    claimed = store.claim(OWNER, [queue])
    assert claimed is not None and claimed.id == job.id
    store.wait_async(claimed)
    return job.id


def counted(store: liteq.stores.BaseStore, since: float) -> tuple[dict[str, tuple[int, int]], ...]:
    """(per-minute counts summed since `since`, totals, the minute rows summed by hand)."""
    by_hand: dict[str, tuple[int, int]] = {}
    for row in store.throughput(since):
        had = by_hand.get(row.queue, (0, 0))
        by_hand[row.queue] = (had[0] + row.completed, had[1] + row.failed)
    return store.finished(since), store.totals(), by_hand


def test_a_job_resolved_outside_a_worker_is_counted_where_it_finishes(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    start = clock.now
    done = waiting(store, "video", delete_on_complete=False)
    gone = waiting(store, "video")  # deleted on completion: counted all the same
    bad = waiting(store, "audio", max_attempts=1)
    again = waiting(store, "audio", max_attempts=2)
    raised = waiting(store, "audio", max_attempts=1)

    assert liteq.resolve_wait_async(store, done, "completed") is liteq.Status.COMPLETED
    assert liteq.resolve_wait_async(store, gone, "completed") is liteq.Status.COMPLETED
    assert liteq.resolve_wait_async(store, bad, "failed") is liteq.Status.FAILED
    # Neither finished nor failed: to run again, or to wait on.
    assert liteq.resolve_wait_async(store, again, "queued") is liteq.Status.QUEUED
    assert liteq.resolve_wait_async(store, raised, "wait_async") is liteq.Status.WAIT_ASYNC
    # Its method raises: with convert_exceptions the attempt fails, as in a worker.
    status = liteq.resolve_wait_async(store, raised, "raise", convert_exceptions=True)
    assert status is liteq.Status.FAILED

    expected = {"video": (2, 0), "audio": (0, 2)}
    assert counted(store, start) == (expected, expected, expected)
    assert store.count(queue="video", status=liteq.Status.COMPLETED) == 1
    assert store.count(queue="audio", status=liteq.Status.FAILED) == 2

    # Beside a worker's own counts, which it tells at a beat: neither is lost or doubled,
    # and no worker appears for the resolved ones.
    assert store.workers() == []
    now = clock.now
    store.register_worker(WorkerInfo("w", "host", 1, None, now, now, 30.0))
    store.beat("w", jobs_done=3, current_job=None, finished={"video": (3, 1)})
    liteq.resolve_wait_async(store, waiting(store, "video"), "completed")
    assert [(w.owner, w.jobs_done) for w in store.workers()] == [("w", 3)]
    clock.advance(120)
    liteq.resolve_wait_async(store, waiting(store, "video"), "completed")
    expected = {"video": (7, 1), "audio": (0, 2)}
    assert counted(store, start) == (expected, expected, expected)
    assert store.finished(since=clock.now) == {"video": (1, 0)}  # in the minute it finished


def test_a_resolve_that_is_refused_counts_nothing(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    job = waiting(store, "video")
    with pytest.raises(ValueError, match="the callback data was bad"):
        liteq.resolve_wait_async(store, job, "raise")  # it still waits
    with pytest.raises(liteq.InvalidState):
        liteq.resolve_wait_async(store, store.enqueue(Waits(), queue="video").id, "completed")
    assert store.totals() == {} and store.throughput(clock.now - 60) == []
