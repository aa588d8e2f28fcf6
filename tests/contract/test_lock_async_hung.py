"""Per-job locks, async jobs and hung-job rescue."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import liteq
from liteq import Status
from liteq.worker.identity import make_owner
from tests.conftest import OWNER, Clock
from tests.jobs import Noop, Waits


# -- locks ---------------------------------------------------------------------
def test_lock_is_exclusive_and_released_on_error(store: liteq.stores.BaseStore) -> None:
    mjob = store.enqueue(Noop())

    def hold_then_fail() -> None:
        with store.locked(mjob.id) as held:
            assert held.id == mjob.id
            with pytest.raises(liteq.JobLocked), store.locked(mjob.id):
                pass
            with pytest.raises(liteq.JobLocked):
                store.delete(mjob.id)
            with pytest.raises(liteq.JobLocked):
                store.get(mjob.id).restart()
            raise ZeroDivisionError  # an error in the block must not leave the lock behind

    with pytest.raises(ZeroDivisionError):
        hold_then_fail()
    with store.locked(mjob.id) as again:
        again.delete()
    assert store.count() == 0


def test_lock_of_a_missing_job(store: liteq.stores.BaseStore) -> None:
    with pytest.raises(liteq.JobNotFound), store.locked(12345):
        pass


def test_a_dead_holder_loses_the_lock_after_its_lease(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    mjob = store.enqueue(Noop())
    holder = store.locked(mjob.id, lease=10)
    holder.__enter__()  # never exited: the holder "died"
    clock.advance(11)
    with store.locked(mjob.id):
        pass
    assert store.claim(OWNER) is not None


# -- async jobs ------------------------------------------------------------------
def waiting(store: liteq.stores.BaseStore, **options: object) -> liteq.ManagedJob:
    store.enqueue(Waits(), **options)  # type: ignore[arg-type]
    assert liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start() == 0
    (mjob,) = store.jobs(status=Status.WAIT_ASYNC)
    return mjob


@pytest.mark.parametrize(
    ("data", "expected", "left"),
    [
        ("completed", Status.COMPLETED, 0),
        ("failed", Status.FAILED, 1),
        ("queued", Status.QUEUED, 1),
        ("wait_async", Status.WAIT_ASYNC, 1),
    ],
)
def test_resolve_applies_the_returned_status(
    store: liteq.stores.BaseStore, data: str, expected: Status, left: int
) -> None:
    mjob = waiting(store, max_attempts=2)
    assert liteq.resolve_wait_async(store, mjob.id, data) is expected
    assert store.count() == left
    if left:
        assert store.get(mjob.id).status is expected


def test_resolve_keeps_completed_jobs_when_asked(store: liteq.stores.BaseStore) -> None:
    mjob = waiting(store, delete_on_complete=False)
    liteq.resolve_wait_async(store, mjob.id, "completed")
    assert store.get(mjob.id).finished_at is not None


def test_resolve_of_a_job_not_waiting(store: liteq.stores.BaseStore) -> None:
    mjob = store.enqueue(Noop())
    with pytest.raises(liteq.InvalidState, match="not wait_async"):
        liteq.resolve_wait_async(store, mjob.id, "completed")
    with pytest.raises(liteq.JobNotFound):
        liteq.resolve_wait_async(store, 999, "completed")


def test_resolve_exceptions_propagate_or_fail_the_job(store: liteq.stores.BaseStore) -> None:
    mjob = waiting(store, max_attempts=1)
    with pytest.raises(ValueError, match="callback data was bad"):
        liteq.resolve_wait_async(store, mjob.id, "raise")
    assert store.get(mjob.id).status is Status.WAIT_ASYNC  # and not left locked:
    assert (
        liteq.resolve_wait_async(store, mjob.id, "raise", convert_exceptions=True) is Status.FAILED
    )
    assert "callback data was bad" in (store.get(mjob.id).error or "")


def test_resolve_converted_failure_retries_while_attempts_remain(
    store: liteq.stores.BaseStore,
) -> None:
    mjob = waiting(store, max_attempts=2)
    assert (
        liteq.resolve_wait_async(store, mjob.id, "raise", convert_exceptions=True) is Status.QUEUED
    )


def test_resolve_with_a_bad_return_value(store: liteq.stores.BaseStore) -> None:
    mjob = waiting(store)
    with pytest.raises(liteq.InvalidStateChange, match=r"return Status\.COMPLETED"):
        liteq.resolve_wait_async(store, mjob.id, "running")
    assert store.get(mjob.id).status is Status.WAIT_ASYNC


def test_resolve_of_a_locked_job(store: liteq.stores.BaseStore) -> None:
    mjob = waiting(store)
    with store.locked(mjob.id), pytest.raises(liteq.JobLocked):
        liteq.resolve_wait_async(store, mjob.id, "completed")


# -- hung jobs -------------------------------------------------------------------
def test_waiting_past_max_runtime_is_requeued_with_a_mulligan(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    mjob = waiting(store, max_runtime=60)
    clock.advance(30)
    assert store.detect_hung_jobs() == []
    clock.advance(31)
    (rescued,) = store.detect_hung_jobs()
    assert (rescued.id, rescued.status, rescued.max_attempts) == (mjob.id, Status.QUEUED, 2)
    assert "waited more than max_runtime" in (rescued.error or "")


def test_an_expired_lease_is_requeued(store: liteq.stores.BaseStore, clock: Clock) -> None:
    store.enqueue(Noop())
    mjob = store.claim(OWNER, lease=30)
    assert mjob is not None
    clock.advance(20)
    assert store.renew_lease(mjob, lease=30)
    clock.advance(20)
    assert store.detect_hung_jobs() == []
    clock.advance(11)
    (rescued,) = store.detect_hung_jobs()
    assert rescued.status is Status.QUEUED and "lease" in (rescued.error or "")


def dead_owner() -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return f"{socket.gethostname()}/{proc.stdout.strip()}/1.00/gone"


def test_a_job_whose_worker_process_is_gone_is_requeued_at_once(
    store: liteq.stores.BaseStore,
) -> None:
    store.enqueue(Noop())
    mjob = store.claim(dead_owner(), lease=3600)
    assert mjob is not None
    (rescued,) = store.detect_hung_jobs()
    assert rescued.status is Status.QUEUED and "is gone" in (rescued.error or "")
    assert rescued.max_attempts == 2  # a mulligan: the lost run does not count


def test_a_live_worker_within_its_lease_is_left_alone(store: liteq.stores.BaseStore) -> None:
    store.enqueue(Noop(), max_runtime=3600)
    assert store.claim(make_owner()) is not None
    assert store.detect_hung_jobs() == []


def test_the_running_worker_may_hand_back_a_locked_job(store: liteq.stores.BaseStore) -> None:
    # Found by the state machine: a lock blocked the claiming worker's own retry().
    store.enqueue(Noop())
    mjob = store.claim(OWNER)
    assert mjob is not None
    with store.locked(mjob.id):
        assert mjob.retry(mulligan=True) is True


def test_a_prefetched_job_is_timed_from_its_real_start(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue_many([Noop(i) for i in range(3)], max_runtime=10)
    store.enqueue(Noop(9))  # no max_runtime: timed from the claim as usual
    held = store.claim_many(OWNER, lease=3600, limit=4)
    assert [m.started_at is None for m in held] == [True, True, True, False]
    clock.advance(60)
    assert store.detect_hung_jobs() == []  # waiting in the batch is not running
    assert store.mark_started(held[0])
    assert held[0].started_at is not None
    assert held[0].started_at.timestamp() == pytest.approx(clock.now)
    clock.advance(11)
    assert [m.id for m in store.detect_hung_jobs()] == []  # its owner is remote: lease rules
    store.complete_many(held)
    assert store.count() == 0
    assert not store.mark_started(held[1])  # gone: a stale handle is refused


def test_completing_a_kept_job_leaves_another_holders_lock_alone(
    store: liteq.stores.BaseStore,
) -> None:
    # Found by the state machine: the worker's fenced write stored a whole row copied at
    # claim time, which silently dropped a lock taken on the job while it ran.
    store.enqueue(Noop(), delete_on_complete=False, max_attempts=3)
    mjob = store.claim(OWNER)
    assert mjob is not None
    with store.locked(mjob.id):
        store.complete(mjob)
        assert store.get(mjob.id).status is Status.COMPLETED
        with pytest.raises(liteq.JobLocked), store.locked(mjob.id):
            pass
    with store.locked(mjob.id):  # released by its holder, as it should be
        pass
