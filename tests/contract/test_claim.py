"""Which job a claim returns: priority, then run_at, then FIFO; queues; delays; locks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import liteq
from liteq import Status
from tests.conftest import OWNER, Clock
from tests.jobs import Noop


def claim_all(store: liteq.stores.BaseStore, queues: list[str] | None = None) -> list[int]:
    order = []
    while (mjob := store.claim(OWNER, queues)) is not None:
        order.append(mjob.job.n)  # type: ignore[union-attr]
        store.complete(mjob)
    return order


def test_priority_then_due_at_once_in_fifo_order_then_run_at(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Noop(1), priority=0)
    store.enqueue(Noop(2), priority=5)
    store.enqueue(Noop(3), priority=0, run_at=clock.now - 10)
    store.enqueue(Noop(4), priority=5)
    store.enqueue(Noop(5), priority=-1)
    store.enqueue(Noop(6), priority=0)
    store.enqueue(Noop(7), priority=0, run_at=clock.now - 20)
    assert claim_all(store) == [2, 4, 1, 6, 7, 3, 5]


def test_delayed_jobs_wait_until_due(store: liteq.stores.BaseStore, clock: Clock) -> None:
    store.enqueue(Noop(1), delay=60, priority=10)
    store.enqueue(Noop(2))
    assert claim_all(store) == [2]
    assert store.next_run_at() == pytest.approx(clock.now + 60)
    clock.advance(59.9)
    assert claim_all(store) == []
    clock.advance(0.2)
    assert claim_all(store) == [1]
    assert store.next_run_at() is None


def test_workers_serve_only_their_queues(store: liteq.stores.BaseStore) -> None:
    store.enqueue(Noop(1), queue="mail")
    store.enqueue(Noop(2), queue="video", priority=9)
    store.enqueue(Noop(3), queue="mail", priority=1)
    store.enqueue(Noop(4))
    assert claim_all(store, ["nothing"]) == []
    assert claim_all(store, ["mail"]) == [3, 1]
    assert claim_all(store, ["video", "default"]) == [2, 4]


def test_claim_marks_running_and_counts_the_attempt(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Noop())
    clock.advance(5)
    mjob = store.claim(OWNER, lease=30)
    assert mjob is not None
    assert mjob.status is Status.RUNNING and mjob.attempts == 1 and mjob.owner == OWNER
    assert mjob.started_at is not None and mjob.started_at.timestamp() == pytest.approx(clock.now)
    assert store.get(mjob.id).status is Status.RUNNING
    assert store.claim(OWNER) is None


@pytest.mark.parametrize("limit", [1, 3])
def test_a_claim_returns_exactly_what_it_stored(
    store: liteq.stores.BaseStore, clock: Clock, limit: int
) -> None:
    # A retried job (its last error kept), one with max_runtime, one plain.
    retried = store.enqueue(Noop(1), max_attempts=3, priority=1)
    first = store.claim(OWNER, lease=30)
    assert first is not None and first.id == retried.id
    store.fail(first, "boom")
    clock.advance(3600)
    store.enqueue(Noop(2), max_runtime=5)
    store.enqueue(Noop(3))
    clock.advance(1)
    claimed = store.claim_many(OWNER, lease=60, limit=limit)
    assert len(claimed) == limit
    for mjob in claimed:
        stored = store.get(mjob.id)
        assert mjob._record == stored._record
        assert mjob.status is Status.RUNNING and mjob.owner == OWNER
        assert mjob._record.lease_until == pytest.approx(clock.now + 60)
    assert claimed[0].attempts == 2 and claimed[0].error == "boom"
    if limit > 1:  # in a batch, max_runtime counts from the real start (mark_started)
        assert [m.started_at is None for m in claimed] == [False, True, False]


def test_a_locked_job_is_not_claimed(store: liteq.stores.BaseStore) -> None:
    mjob = store.enqueue(Noop())
    with store.locked(mjob.id):
        assert store.claim(OWNER) is None
    assert store.claim(OWNER) is not None


def test_jobs_run_once_each(store: liteq.stores.BaseStore) -> None:
    store.enqueue_many([Noop(i) for i in range(50)])
    assert sorted(claim_all(store)) == list(range(50))
    assert store.count() == 0


# One store for all examples: each starts by deleting what an earlier one left.
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(-2, 2), st.integers(-1, 3)), max_size=25
    ),
    queues=st.none() | st.lists(st.sampled_from("abcde"), max_size=5),
    limit=st.integers(1, 8),
)
def test_claims_take_the_best_due_jobs_across_queues(
    store: liteq.stores.BaseStore,
    clock: Clock,
    jobs: list[tuple[str, int, int]],
    queues: list[str] | None,
    limit: int,
) -> None:
    for mjob in list(store.jobs()):
        mjob.delete()
    made = [
        store.enqueue(Noop(n), queue=queue, priority=priority, run_at=clock.now - age)
        for n, (queue, priority, age) in enumerate(jobs)
    ]
    mine = [m for m in made if queues is None or m.queue in queues]
    first = min((m.run_at for m in mine), default=None)
    assert store.next_run_at(queues) == (
        None if first is None else pytest.approx(first.timestamp())
    )
    served = [m for m in mine if m.run_at <= m.created_at]
    best_first = [m.job.n for m in sorted(served, key=lambda m: (-m.priority, m.run_at, m.id))]  # type: ignore[union-attr]
    got: list[int] = []
    while batch := store.claim_many(OWNER, queues, limit=limit):
        assert len(batch) <= limit
        got += [m.job.n for m in batch]  # type: ignore[union-attr]
        store.complete_many(batch)
    assert got == best_first
