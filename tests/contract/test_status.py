"""The status machine, retries, mulligans, restart, completion, hooks and fencing."""

from __future__ import annotations

import itertools
import logging

import pytest

import liteq
from liteq import Status
from liteq.status import TRANSITIONS, check_transition
from liteq.stores import transitions
from tests.conftest import OWNER, Clock, StoreFactory
from tests.jobs import Fails, Noop, Waits


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Status, Status)))
def test_transition_table(old: Status, new: Status) -> None:
    allowed = {
        (Status.UNQUEUED, Status.QUEUED),
        (Status.QUEUED, Status.RUNNING),
        (Status.RUNNING, Status.COMPLETED),
        (Status.RUNNING, Status.FAILED),
        (Status.RUNNING, Status.WAIT_ASYNC),
        (Status.RUNNING, Status.QUEUED),
        (Status.WAIT_ASYNC, Status.RUNNING),
        (Status.WAIT_ASYNC, Status.COMPLETED),
        (Status.WAIT_ASYNC, Status.FAILED),
        (Status.WAIT_ASYNC, Status.QUEUED),
        (Status.FAILED, Status.QUEUED),
    }
    if (old, new) in allowed:
        check_transition(1, old, new)
        assert new in TRANSITIONS[old]
    else:
        with pytest.raises(liteq.InvalidStateChange, match=f"from {old.value} to {new.value}"):
            check_transition(1, old, new)


def test_status_values_are_stable() -> None:
    assert [s.value for s in Status] == [
        "unqueued",
        "queued",
        "running",
        "wait_async",
        "completed",
        "failed",
    ]


def claimed(store: liteq.stores.BaseStore, job: liteq.Job, **options: object) -> liteq.ManagedJob:
    store.enqueue(job, **options)  # type: ignore[arg-type]
    mjob = store.claim(OWNER)
    assert mjob is not None
    return mjob


def test_complete_deletes_by_default(store: liteq.stores.BaseStore) -> None:
    mjob = claimed(store, Noop())
    store.complete(mjob)
    with pytest.raises(liteq.JobNotFound):
        store.get(mjob.id)


def test_complete_kept_with_delete_on_complete_false(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    mjob = claimed(store, Noop(), delete_on_complete=False)
    clock.advance(3)
    store.complete(mjob)
    kept = store.get(mjob.id)
    assert kept.status is Status.COMPLETED
    assert kept.finished_at is not None and kept.started_at is not None
    assert (kept.finished_at - kept.started_at).total_seconds() == pytest.approx(3)
    with pytest.raises(liteq.InvalidStateChange, match="from completed to queued"):
        kept.retry()


def test_failure_retries_with_backoff_then_fails(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Fails(), max_attempts=3)
    for attempt in (1, 2):
        mjob = store.claim(OWNER)
        assert mjob is not None and mjob.attempts == attempt
        assert store.fail(mjob, "RuntimeError: boom", "Traceback ...") is Status.QUEUED
        wait = mjob.run_at.timestamp() - clock.now
        assert 0.75 * 2**attempt <= wait <= 1.25 * 2**attempt
        assert store.claim(OWNER) is None  # backing off
        clock.advance(wait + 0.001)
    mjob = store.claim(OWNER)
    assert mjob is not None and mjob.attempts == 3
    assert store.fail(mjob, "RuntimeError: boom", "Traceback ...") is Status.FAILED
    failed = store.get(mjob.id)
    assert failed.status is Status.FAILED and failed.finished_at is not None
    assert failed.error == "RuntimeError: boom" and failed.traceback == "Traceback ..."
    assert failed.retry() is False  # attempts used up
    failed.restart()
    fresh = store.get(mjob.id)
    assert (fresh.status, fresh.attempts, fresh.error) == (Status.QUEUED, 0, None)


def test_fail_without_retry_is_final(store: liteq.stores.BaseStore) -> None:
    mjob = claimed(store, Fails(), max_attempts=5)
    assert store.fail(mjob, "bad input", retry=False) is Status.FAILED


def test_backoff_is_capped_and_configurable() -> None:
    class Quick(Noop):
        retry_backoff = 1.5
        retry_backoff_max = 10.0

    assert all(0 < Quick().retry_delay(n) <= 10.0 for n in range(1, 200))
    assert 0.75 * 1.5 <= Quick().retry_delay(1) <= 1.25 * 1.5
    assert all(0 < Noop().retry_delay(n) <= 3600 for n in (1, 12, 100, 10_000))


def test_mulligan_requeues_at_once_and_raises_max_attempts_up_to_20(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Noop(), max_attempts=1)
    for expected_max in range(2, 21):
        mjob = store.claim(OWNER)
        assert mjob is not None
        assert mjob.retry(mulligan=True) is True
        assert mjob.max_attempts == expected_max
        assert mjob.run_at.timestamp() == pytest.approx(clock.now)
    for _ in range(19):  # attempts catch up with the capped max_attempts
        mjob = store.claim(OWNER)
        assert mjob is not None
        if not mjob.retry(mulligan=True):
            break
    assert store.get(mjob.id).status is Status.FAILED
    assert store.get(mjob.id).max_attempts == 20


def test_manual_retry_of_a_failed_job(store: liteq.stores.BaseStore) -> None:
    mjob = claimed(store, Fails(), max_attempts=3)
    store.fail(mjob, "fatal", retry=False)
    failed = store.get(mjob.id)
    assert failed.status is Status.FAILED and failed.attempts == 1
    # retry=False made this attempt final; a mulligan gives it another go.
    assert failed.retry(mulligan=True) is True
    assert store.get(mjob.id).status is Status.QUEUED


def test_retry_of_a_queued_job_is_an_invalid_change(store: liteq.stores.BaseStore) -> None:
    mjob = store.enqueue(Noop())
    with pytest.raises(liteq.InvalidStateChange, match="from queued to queued"):
        mjob.retry()


def test_only_the_claiming_worker_may_retry_a_running_job(store: liteq.stores.BaseStore) -> None:
    mine = claimed(store, Noop(), max_attempts=3)
    seen = store.get(mine.id)
    with pytest.raises(liteq.InvalidState, match="only that worker"):
        seen.retry()
    with pytest.raises(liteq.InvalidState, match="run it twice"):
        seen.restart()
    assert mine.retry() is True


def test_restart_from_every_status_but_running(store: liteq.stores.BaseStore) -> None:
    queued = store.enqueue(Noop())
    queued.restart()
    waiting = claimed(store, Waits(), delete_on_complete=False)
    store.wait_async(waiting)
    store.get(waiting.id).restart()
    assert store.get(waiting.id).status is Status.QUEUED
    assert store.count(status=Status.QUEUED) == 2


def test_acknowledgements_are_fenced(store: liteq.stores.BaseStore, clock: Clock) -> None:
    store.enqueue(Noop(), max_attempts=3)
    first = store.claim(OWNER, lease=10)
    assert first is not None
    clock.advance(11)
    assert [m.id for m in store.detect_hung_jobs()] == [first.id]
    second = store.claim("another-worker")
    assert second is not None and second.attempts == 2
    with pytest.raises(liteq.LeaseLost, match="no longer this worker's"):
        store.complete(first)
    with pytest.raises(liteq.LeaseLost):
        store.fail(first, "late")
    assert store.renew_lease(first) is False
    assert store.renew_lease(second) is True
    store.complete(second)
    assert store.count() == 0


def test_hooks_see_every_change(make_store: StoreFactory, clock: Clock) -> None:
    seen: list[tuple[int, str, str, str | None]] = []
    store = make_store(
        clock=clock,
        on_status_change=lambda m, old, msg: seen.append((m.id, old.value, m.status.value, msg)),
    )
    mjob = store.enqueue(Noop(), max_attempts=2)
    running = store.claim(OWNER)
    assert running is not None
    store.fail(running, "oops")
    assert seen == [
        (mjob.id, "unqueued", "queued", "enqueued"),
        (mjob.id, "queued", "running", "started"),
        (mjob.id, "running", "queued", "oops"),
    ]


def test_what_a_hook_is_given_keeps_the_status_it_was_given(
    make_store: StoreFactory, clock: Clock
) -> None:
    given: list[tuple[liteq.ManagedJob, str]] = []
    store = make_store(
        clock=clock, on_status_change=lambda m, old, msg: given.append((m, m.status.value))
    )
    store.enqueue_many([Noop(1), Noop(2)])
    _, claimed = store.complete_and_claim([], OWNER)
    _, second = store.complete_and_claim(claimed, OWNER)  # as a worker's steady state does
    store.complete_many(second)
    assert [status for _, status in given] == ["queued", "queued", *["running", "completed"] * 2]
    assert [m.status.value for m, _ in given] == [status for _, status in given]
    assert claimed[0].status is Status.COMPLETED  # the worker's own handle did change


def test_hooks_never_see_a_rolled_back_change(make_store: StoreFactory, clock: Clock) -> None:
    seen: list[tuple[int, str]] = []
    store = make_store(
        clock=clock, on_status_change=lambda m, old, msg: seen.append((m.id, m.status.value))
    )
    mjob = store.enqueue(Noop())
    seen.clear()

    def change_then_fail() -> None:  # as a disk error after the first write would
        with store._write() as w:
            transitions.change(w, mjob.record, Status.RUNNING, "started", None)
            raise RuntimeError("after the change, before the commit")

    with pytest.raises(RuntimeError, match="before the commit"):
        change_then_fail()
    assert seen == []
    assert store.get(mjob.id).status is Status.QUEUED


class Noisy(Noop):
    changes: list[tuple[str, str]] = []  # noqa: RUF012 - shared record of calls

    def status_did_change(
        self, job: liteq.ManagedJob, old_status: Status, message: str | None
    ) -> None:
        Noisy.changes.append((old_status.value, job.status.value))
        raise RuntimeError("hook bug")


def test_a_raising_hook_is_logged_not_fatal(
    make_store: StoreFactory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(m: liteq.ManagedJob, old: Status, msg: str | None) -> None:
        raise ValueError("store hook bug")

    store = make_store(clock=clock, on_status_change=bad_hook)
    Noisy.changes.clear()
    with caplog.at_level(logging.ERROR, logger="liteq.store"):
        store.enqueue(Noisy())
        assert liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start() == 0
    assert Noisy.changes == [
        ("unqueued", "queued"),
        ("queued", "running"),
        ("running", "completed"),
    ]
    assert store.count() == 0
    assert "status_did_change of job" in caplog.text and "store's status hook" in caplog.text


class Heard(Noop):
    changes: list[tuple[int, str, str]] = []  # noqa: RUF012 - shared record of calls

    def status_did_change(
        self, job: liteq.ManagedJob, old_status: Status, message: str | None
    ) -> None:
        Heard.changes.append((job.id, old_status.value, job.status.value))


def test_a_batch_tells_the_hooks_of_the_classes_that_listen(store: liteq.stores.BaseStore) -> None:
    # Only the jobs whose class listens are announced, each once, with its id, in order;
    # in a batch of one class (inserted by one statement) and in a batch of several.
    Heard.changes.clear()
    alike = store.enqueue_many([Heard(1), Heard(2)])
    assert Heard.changes == [(m.id, "unqueued", "queued") for m in alike]
    Heard.changes.clear()
    mixed = store.enqueue_many([Noop(1), Heard(2), Noop(3), Heard(4)])
    assert Heard.changes == [(m.id, "unqueued", "queued") for m in mixed[1::2]]
    Heard.changes.clear()
    assert store.enqueue_many([Noop(1), Noop(2)])[1].id == mixed[-1].id + 2
    assert Heard.changes == []


def test_delete_any_job(store: liteq.stores.BaseStore) -> None:
    mjob = store.enqueue(Noop())
    store.delete(mjob.id)
    assert store.count() == 0
    running = claimed(store, Noop())
    running.delete()
    with pytest.raises(liteq.LeaseLost, match="deleted while it ran"):
        store.complete(running)


def test_a_batch_acknowledgement_is_fenced_per_job(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue_many([Noop(i) for i in range(4)], max_attempts=3)
    mine = store.claim_many(OWNER, lease=10, limit=4)
    assert [m.job.n for m in mine] == [0, 1, 2, 3]  # type: ignore[union-attr]
    clock.advance(11)
    store.renew_leases(mine[:2] + mine[3:], lease=10)  # job 2's lease lapses
    (rescued,) = store.detect_hung_jobs()
    assert rescued.id == mine[2].id
    again = store.claim("another-worker")
    assert again is not None and again.id == mine[2].id
    lost = store.complete_many(mine)
    assert [str(e) for e in lost] == [
        str(
            liteq.LeaseLost(
                f"job {mine[2].id} is no longer this worker's: it was re-queued (status running, attempt 2)"
            )
        )
    ]
    assert [m.id for m in store.jobs()] == [mine[2].id]  # only the re-run job is left
    store.complete(again)
    assert store.count() == 0


def test_completing_and_claiming_in_one_go(store: liteq.stores.BaseStore, clock: Clock) -> None:
    store.enqueue_many([Noop(i) for i in range(3)], max_attempts=3)
    store.enqueue(Noop(9), priority=-1, delete_on_complete=False)
    first = store.claim(OWNER, lease=10)
    kept = store.claim("another-worker")
    assert first is not None and kept is not None
    lost, (second,) = store.complete_and_claim([first], OWNER, lease=10)
    assert lost == [] and first.status is Status.COMPLETED
    assert [m.job.n for m in store.jobs()] == [1, 2, 9]  # type: ignore[union-attr]
    clock.advance(11)  # second's lease lapses: it is re-queued
    store.renew_leases([kept], lease=10)
    (rescued,) = store.detect_hung_jobs()
    assert rescued.id == second.id
    lost, (third,) = store.complete_and_claim([second], OWNER)
    assert [str(e) for e in lost] == [
        f"job {second.id} is no longer this worker's: it was re-queued (status queued, attempt 1)"
    ]
    assert third.id == second.id and third.attempts == 2  # claimed again: a new run
    lost, (last,) = store.complete_and_claim([third, kept], OWNER)
    assert lost == [] and last.job.n == 9  # type: ignore[union-attr]
    assert store.complete_and_claim([last], OWNER) == ([], [])
    assert [(m.job.n, m.status) for m in store.jobs()] == [(9, Status.COMPLETED)]  # type: ignore[union-attr]
    with pytest.raises(liteq.InvalidState, match="not claimed by this worker"):
        store.complete_and_claim([store.get(last.id)], OWNER)
