"""Paused queues, the registry of live workers, and counts of finished jobs, on every store."""

from __future__ import annotations

import pytest

import liteq
from liteq.stores.contract import WorkerInfo
from tests.conftest import OWNER, Clock
from tests.jobs import Noop


def test_a_paused_queue_takes_jobs_but_gives_none_to_workers(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.pause("mail")
    mail = store.enqueue(Noop(1), queue="mail")  # enqueue still works
    assert store.paused() == {"mail"}
    assert store.claim(OWNER) is None  # every queue, while only it holds jobs
    assert store.claim(OWNER, queues=["mail"]) is None
    assert store.next_run_at() is None  # nothing due that a worker could take
    other = store.enqueue(Noop(2), queue="other", priority=-5)
    assert [m.id for m in store.claim_many(OWNER, limit=5)] == [other.id]  # several queues
    assert liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start() == 0
    assert store.get(mail.id).status is liteq.Status.QUEUED
    store.resume("mail")
    assert store.paused() == set()
    claimed = store.claim(OWNER)
    assert claimed is not None and claimed.id == mail.id
    with pytest.raises(ValueError, match="lone surrogate"):
        store.pause("\ud800")


def info(owner: str, clock: Clock, lease: float = 30.0) -> WorkerInfo:
    return WorkerInfo(owner, "host", 42, ("mail",), clock.now, clock.now, lease)


def test_workers_register_beat_and_vanish_when_silent(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.register_worker(info("a", clock))
    store.register_worker(info("b", clock, lease=5.0))
    clock.advance(4)
    store.beat("a", jobs_done=7, current_job=12, finished={}, rss=50 << 20)
    (a, b) = store.workers()
    assert (a.owner, a.jobs_done, a.current_job, a.queues) == ("a", 7, 12, ("mail",))
    assert a.beat_at == clock.now and b.jobs_done == 0
    assert (a.rss, b.rss) == (50 << 20, None)
    clock.advance(2)  # b's lease (5 s) has passed without a beat: it is not live
    assert [w.owner for w in store.workers()] == ["a"]
    store.unregister_worker("a")
    assert store.workers() == []


def test_a_beat_tells_how_many_jobs_the_worker_has_in_flight(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.register_worker(info("a", clock))
    store.register_worker(info("b", clock))
    assert [w.in_flight for w in store.workers()] == [0, 0]  # none told yet
    clock.advance(1)
    store.beat("a", jobs_done=2, current_job=12, finished={}, in_flight=3)
    store.beat("b", jobs_done=1, current_job=None, finished={})  # a beat that does not say
    (a, b) = store.workers()
    assert (a.owner, a.in_flight, a.current_job) == ("a", 3, 12)
    assert (b.owner, b.in_flight) == ("b", 0)
    store.beat("a", jobs_done=5, current_job=None, finished={}, in_flight=0)
    assert [w.in_flight for w in store.workers()] == [0, 0]  # each beat says it anew


def test_finished_jobs_are_counted_by_the_minute(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.register_worker(info("a", clock))
    start = clock.now
    store.beat("a", jobs_done=3, current_job=None, finished={"mail": (3, 1)})
    clock.advance(120)
    store.beat("a", jobs_done=5, current_job=None, finished={"mail": (2, 0), "img": (1, 0)})
    assert store.finished(since=start - 60) == {"mail": (5, 1), "img": (1, 0)}
    assert store.finished(since=clock.now - 30) == {"mail": (2, 0), "img": (1, 0)}
    clock.advance(25 * 3600)
    minute = int(start // 60)
    assert [
        (r.minute - minute, r.queue, r.completed, r.failed) for r in store.throughput(start)
    ] == [
        (0, "mail", 3, 1),
        (2, "img", 1, 0),
        (2, "mail", 2, 0),
    ]
    store.beat("a", jobs_done=5, current_job=None, finished={})  # a day later: forgotten
    assert store.finished(since=start) == {}
    assert store.throughput(start) == []
    # ... but not from the totals, which only grow (counters for /metrics).
    store.pause("img")
    store.beat("a", jobs_done=6, current_job=None, finished={"img": (1, 2)})
    assert store.totals() == {"mail": (5, 1), "img": (2, 2)}
    assert store.paused() == {"img"}
