"""A wall clock that steps (NTP, a VM resumed, an operator) delays nothing due at once.

Only explicit delays, run_at times and retry backoffs follow the wall clock; a job enqueued
with no delay (or re-queued by a mulligan or a restart) is due at once, in FIFO order.
"""

from __future__ import annotations

import pytest

import liteq
from liteq import Status
from tests.conftest import OWNER, Clock
from tests.jobs import Noop

HOUR = 3600.0


def claim_all(store: liteq.stores.BaseStore) -> list[int]:
    order = []
    while (mjob := store.claim(OWNER)) is not None:
        order.append(mjob.job.n)  # type: ignore[union-attr]
        store.complete(mjob)
    return order


def test_jobs_enqueued_while_the_clock_ran_fast_are_due_once_it_is_set_right(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    clock.advance(HOUR)  # an hour fast
    for n in range(5):
        store.enqueue(Noop(n))
    clock.advance(-HOUR)  # set right
    assert store.next_run_at() is not None
    assert store.next_run_at() <= clock.now  # type: ignore[operator]
    assert claim_all(store) == [0, 1, 2, 3, 4]


def test_a_clock_stepped_back_lets_no_newer_job_overtake_an_older_one(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Noop(1))
    store.enqueue(Noop(2))
    clock.advance(-HOUR)
    store.enqueue(Noop(3))
    clock.advance(-60)
    store.enqueue(Noop(4))
    assert claim_all(store) == [1, 2, 3, 4]


def test_delays_follow_the_wall_clock(store: liteq.stores.BaseStore, clock: Clock) -> None:
    store.enqueue(Noop(1), delay=60)
    store.enqueue(Noop(2), delay=0)  # no delay is due at once
    assert claim_all(store) == [2]
    clock.advance(-HOUR)
    assert claim_all(store) == []
    clock.advance(HOUR + 61)
    assert claim_all(store) == [1]


def test_a_mulligan_and_a_restart_under_a_fast_clock_are_due_at_once(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    first = store.enqueue(Noop(1), max_attempts=1)
    store.enqueue(Noop(2))
    clock.advance(HOUR)
    running = store.claim(OWNER)
    assert running is not None and running.id == first.id
    assert store.fail(running, "the worker died", mulligan=True) is Status.QUEUED
    other = store.claim(OWNER)
    assert other is not None and other.id == first.id  # the mulligan keeps its place
    store.fail(other, "boom", retry=False)
    store.get(first.id).restart()
    clock.advance(-HOUR)
    assert claim_all(store) == [1, 2]


def test_a_job_due_at_once_shows_its_enqueue_time_and_waits_since_then(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    mjob = store.enqueue(Noop(1), queue="mail")
    assert mjob.run_at == mjob.created_at
    assert store.get(mjob.id).run_at == mjob.created_at
    clock.advance(30)
    [queued] = [c for c in store.summary() if c.queue == "mail" and c.status is Status.QUEUED]
    assert queued.due == 1
    assert queued.oldest_due == pytest.approx(mjob.created_at.timestamp(), abs=1e-3)
