"""The operators' operations (liteq.admin), on every store alike."""

from __future__ import annotations

import pytest

import liteq
from liteq import Status, admin
from liteq.stores import JobQuery
from tests.conftest import OWNER, Clock
from tests.jobs import Fails, Noop


def failed(store: liteq.stores.BaseStore, queue: str = "default") -> liteq.ManagedJob:
    mjob = store.enqueue(Fails("boom"), queue=queue, priority=100)
    claimed = store.claim(OWNER, queues=[queue])
    assert claimed is not None and claimed.id == mjob.id
    store.fail(claimed, "ValueError: boom")
    return store.get(mjob.id)


def test_queues_counts_every_status_and_the_oldest_wait(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Noop(1), queue="mail")
    clock.advance(30)
    store.enqueue(Noop(2), queue="mail")
    store.enqueue(Noop(3), queue="mail", delay=3600)  # not due: it does not wait yet
    failed(store, "images")
    clock.advance(10)
    (images, mail) = admin.queues(store)
    assert (mail.queue, mail.counts, mail.total) == ("mail", {Status.QUEUED: 3}, 3)
    assert mail.oldest_wait == pytest.approx(40)
    assert (images.counts, images.oldest_wait) == ({Status.FAILED: 1}, None)


def test_search_filters_and_pages_both_ways(store: liteq.stores.BaseStore, clock: Clock) -> None:
    jobs = [store.enqueue(Noop(n), queue="a" if n % 2 else "b") for n in range(10)]
    bad = failed(store, "a")
    assert [m.id for m in store.search(JobQuery(queue="a", limit=3))] == [
        jobs[1].id,
        jobs[3].id,
        jobs[5].id,
    ]
    page = store.search(JobQuery(queue="a", after=jobs[5].id, limit=3))
    assert [m.id for m in page] == [jobs[7].id, jobs[9].id, bad.id]
    newest = store.search(JobQuery(before=bad.id, limit=2))
    assert [m.id for m in newest] == [jobs[9].id, jobs[8].id]
    assert [m.id for m in store.search(JobQuery(error_contains="boom"))] == [bad.id]
    assert [m.id for m in store.search(JobQuery(job_type="tests.jobs.Fails"))] == [bad.id]
    assert store.search(JobQuery(status=Status.FAILED, finished_since=clock.now + 1)) == []
    assert len(list(admin.each(store, JobQuery(limit=4)))) == 11


def test_retry_failed_gives_each_failed_job_another_attempt(
    store: liteq.stores.BaseStore,
) -> None:
    one, two, other = failed(store), failed(store), failed(store, "other")
    store.enqueue(Noop())
    outcome = admin.retry_failed(store, queue="default")
    assert sorted(outcome.done) == [one.id, two.id] and outcome.refused == {}
    again = store.get(one.id)
    assert (again.status, again.max_attempts) == (Status.QUEUED, 2)
    assert store.get(other.id).status is Status.FAILED
    refused = admin.retry(store, [one.id, 10**6])
    assert set(refused.refused) == {one.id, 10**6}


def test_restart_and_delete_say_which_they_left(store: liteq.stores.BaseStore) -> None:
    bad = failed(store)
    running = store.enqueue(Noop())
    assert store.claim(OWNER) is not None
    outcome = admin.restart(store, [bad.id, running.id])
    assert outcome.done == [bad.id] and "is running" in outcome.refused[running.id]
    assert store.get(bad.id).attempts == 0
    gone = admin.delete(store, [bad.id, bad.id])
    assert gone.done == [bad.id] and "no job" in gone.refused[bad.id]


def test_purge_by_status_queue_and_age(store: liteq.stores.BaseStore, clock: Clock) -> None:
    old = [failed(store) for _ in range(3)]
    elsewhere = failed(store, "other")
    clock.advance(3600)
    new = failed(store)
    kept = store.enqueue(Noop(), delete_on_complete=False)
    done = store.claim(OWNER, queues=["default"])
    assert done is not None and done.id == kept.id
    store.complete(done)
    assert admin.purgeable(store, Status.FAILED, queue="default", older_than=60) == 3
    assert admin.purge(store, Status.FAILED, queue="default", older_than=60) == 3
    assert {m.id for m in store.jobs(status=Status.FAILED)} == {elsewhere.id, new.id}
    assert all(not any(m.id == o.id for m in store.jobs()) for o in old)
    assert admin.purge(store, Status.COMPLETED) == 1
    with pytest.raises(ValueError, match="completed or failed"):
        store.purge(Status.QUEUED)
