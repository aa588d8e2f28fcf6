"""Counts of jobs by queue and status are kept, not scanned: on every store, whatever the
change of status, they stay what a scan of the jobs finds."""

from __future__ import annotations

import collections

import pytest

import liteq
from liteq import Status, admin
from liteq.stores import JobQuery
from liteq.stores.contract import WAITS_FOR_ITS_TYPE
from tests.conftest import OWNER, Clock
from tests.jobs import Fails, Noop


def scanned(store: liteq.stores.BaseStore) -> dict[tuple[str, Status], int]:
    """Jobs per (queue, status), by listing every one of them."""
    found = collections.Counter((m.queue, m.status) for m in admin.each(store, JobQuery()))
    return dict(found)


def kept(store: liteq.stores.BaseStore) -> dict[tuple[str, Status], int]:
    return {(row.queue, row.status): row.count for row in store.summary()}


def test_every_change_of_status_keeps_the_counts_exact(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue_many([Noop(n) for n in range(7)], queue="bulk")
    first = store.enqueue(Noop(1), queue="mail", keep_result=1.0, delete_on_complete=False)
    store.enqueue(Noop(2), queue="mail", coalesce_id="one")
    store.enqueue(Noop(3), queue="mail", coalesce_id="one")  # coalesced: no new job
    after = store.enqueue(Noop(4), queue="mail", after=[first])
    for _ in range(3):
        claimed = store.claim(OWNER, queues=["bulk"])
        assert claimed is not None
        store.complete(claimed)  # deleted on completion
    batch = store.claim_many(OWNER, queues=["bulk"], limit=2)
    store.fail(batch[0], "ValueError: no", retry=False)
    store.wait_async(batch[1])
    assert kept(store) == scanned(store)
    claimed = store.claim(OWNER, queues=["mail"])
    assert claimed is not None and claimed.id == first.id
    store.complete(claimed)  # kept: its result too; its dependent is released
    store.get(batch[0].id).restart()
    store.delete(store.get(after.id))
    failing = store.enqueue(Fails("x"), queue="other", max_attempts=2)
    claimed = store.claim(OWNER, queues=["other"])
    assert claimed is not None and claimed.id == failing.id
    store.fail(claimed, "RuntimeError: x")  # queued again, for its second attempt
    clock.advance(5)
    assert store.expire_results() == 1  # not deleted on completion: its result cleared
    assert store.purge(Status.COMPLETED) == 1
    assert kept(store) == scanned(store)
    assert store.check_counts() == []
    assert store.count() == sum(scanned(store).values())
    assert store.count(queue="bulk") == 4
    assert store.count(status=Status.QUEUED) == 5
    assert store.count(queue="mail", status=Status.QUEUED) == 1


def test_a_queue_whose_jobs_are_gone_is_no_longer_counted(store: liteq.stores.BaseStore) -> None:
    mjob = store.enqueue(Noop(), queue="once")
    claimed = store.claim(OWNER, queues=["once"])
    assert claimed is not None
    store.complete(claimed)
    assert store.count(queue="once") == 0
    assert [row for row in store.summary() if row.queue == "once"] == []
    assert "once" not in {q.queue for q in admin.queues(store)}
    with pytest.raises(liteq.JobNotFound):
        store.get(mjob.id)


def test_due_and_the_oldest_wait_over_several_priorities(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    # What depends on the time is read per priority: due now against due later, and
    # the one waiting longest among the first of each priority.
    store.enqueue(Noop(1), priority=0)
    clock.advance(20)
    store.enqueue(Noop(2), priority=5)
    store.enqueue(Noop(3), priority=5, delay=60)
    store.enqueue(Noop(4), priority=-3, delay=3600)
    store.enqueue(Noop(5), priority=9)
    waiting = store.enqueue(Noop(6), priority=0, after=[store.enqueue(Noop(7), queue="x")])
    clock.advance(10)
    (row,) = [r for r in store.summary() if r.queue == "default"]
    assert (row.status, row.count, row.due) == (Status.QUEUED, 6, 3)
    assert row.oldest_due is not None and clock.now - row.oldest_due == pytest.approx(30)
    clock.advance(60)
    (row,) = [r for r in store.summary() if r.queue == "default"]
    assert row.due == 4  # the delay of 60 s is over; 3600 s, and the dependency, are not
    assert store.get(waiting.id).status is Status.QUEUED


def test_jobs_waiting_for_a_worker_that_knows_their_type_are_counted(
    store: liteq.stores.BaseStore,
) -> None:
    for n in range(3):
        mjob = store.enqueue(Noop(n), queue="mixed")
        claimed = store.claim(OWNER, queues=["mixed"])
        assert claimed is not None and claimed.id == mjob.id
        reason = f"{WAITS_FOR_ITS_TYPE}: no module" if n else "RuntimeError: a retry"
        assert store.release([claimed], delay=3600, error=reason) == 1
    counts = {r.queue: r for r in store.summary()}
    assert counts["mixed"].count == 3
    assert counts["mixed"].unknown_type == 2
