"""Results (keep_result) and dependencies (`after=`), on every store."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import liteq
from liteq.status import Status
from liteq.testing import drain
from tests.conftest import Clock
from tests.result_jobs import Breaks, Step, Unencodable

Store = liteq.stores.BaseStore


def test_a_kept_result_is_read_back_and_expires_on_the_stores_clock(
    store: Store, clock: Clock
) -> None:
    kept = store.enqueue(Step("a"), keep_result=60)
    forever = store.enqueue(Step("b"), keep_result=True, delete_on_complete=False)
    plain = store.enqueue(Step("c"), delete_on_complete=False)
    with pytest.raises(liteq.ResultNotReady, match=f"job {kept.id} has not finished"):
        kept.result()
    drain(store)
    assert kept.result() == {"name": "a", "before": {}}
    assert store.result(forever.id, timeout=1) == {"name": "b", "before": {}}
    assert store.get(kept.id).status is Status.COMPLETED  # kept despite delete_on_complete
    with pytest.raises(liteq.ResultExpired, match="without keep_result"):
        plain.result()
    clock.advance(61)
    with pytest.raises(liteq.ResultExpired, match="expired"):
        kept.result()
    assert store.expire_results() == 1
    with pytest.raises(liteq.ResultExpired, match="is gone"):
        kept.result()
    assert forever.result() == {"name": "b", "before": {}}
    clock.advance(86400)
    assert store.expire_results() == 1
    assert store.get(forever.id).status is Status.COMPLETED  # kept: only its result went
    with pytest.raises(liteq.ResultExpired):
        forever.result()
    assert store.expire_results() == 0


def test_a_failed_job_raises_job_failed_and_an_unencodable_value_fails_it(store: Store) -> None:
    broken = store.enqueue(Breaks(), keep_result=True)
    odd = store.enqueue(Unencodable())
    drain(store, raise_errors=False)
    with pytest.raises(liteq.JobFailed, match="RuntimeError: broken on purpose") as failed:
        broken.result(timeout=0.1)
    assert (failed.value.job_id, failed.value.error) == (
        broken.id,
        "RuntimeError: broken on purpose",
    )
    after = store.get(odd.id)
    assert after.status is Status.FAILED and after.attempts == 1
    assert "cannot be kept as its result" in (after.error or "")
    assert "set" in (after.error or "")


def test_a_task_keeps_its_functions_value(store: Store) -> None:
    from tests.result_tasks import double, make_tasks

    tasks = make_tasks(store)
    assert tasks["double"].enqueue_with((21,)).job_type.endswith("double")
    mjob = tasks["triple_kept"].enqueue(4)
    unkept = tasks["double"].enqueue(5)
    drain(store)
    assert mjob.result() == 12
    assert double(1) == 2
    assert store.count(status=Status.FAILED) == 0
    with pytest.raises(liteq.ResultExpired):
        unkept.result()


def test_result_waits_with_few_reads_and_honours_its_timeout(store: Store) -> None:
    mjob = store.enqueue(Step("slow"), keep_result=True)
    reads: list[int] = []
    read = store._read

    def counted(job_id: int) -> Any:
        reads.append(job_id)
        return read(job_id)

    store._read = counted  # type: ignore[method-assign]
    began = time.monotonic()
    with pytest.raises(liteq.ResultNotReady):
        mjob.result(timeout=1.2)
    assert 1.2 <= time.monotonic() - began < 2.5
    assert len(reads) <= 3  # (no busy loop: a read when the store changed, or each second)
    reads.clear()
    worker = threading.Thread(target=lambda: (time.sleep(0.3), drain(store)))
    worker.start()
    try:
        began = time.monotonic()
        assert mjob.result(timeout=10) == {"name": "slow", "before": {}}
        assert time.monotonic() - began < 2.0
    finally:
        worker.join()
    assert len(reads) <= 12


def test_aresult_waits_without_blocking_the_loop(store: Store) -> None:
    import asyncio

    mjob = store.enqueue(Step("async"), keep_result=True)

    async def main() -> Any:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(liteq.ResultNotReady):
            await mjob.aresult(0.3)
        assert ticks >= 10
        await asyncio.to_thread(drain, store)
        value = await mjob.aresult(5)
        ticker.cancel()
        return value

    assert asyncio.run(main()) == {"name": "async", "before": {}}


def test_a_chain_and_a_fan_in_run_in_order_with_their_dependencies_results(
    store: Store,
) -> None:
    a = store.enqueue(Step("a"), keep_result=True)
    b = store.enqueue(Step("b"), keep_result=True, after=[a])
    c = store.enqueue(Step("c"), keep_result=True, after=[b.id, a])
    assert store.get(c.id).waiting and store.get(b.id).waiting
    assert store.dependencies(c.id) == [(a.id, False), (b.id, False)]
    assert store.next_run_at() is not None
    claimed = store.claim_many("o", limit=5)
    assert [m.id for m in claimed] == [a.id]  # a alone is due
    store.release(claimed)
    drain(store)
    assert c.result() == {
        "name": "c",
        "before": {str(a.id): {"name": "a", "before": {}}, str(b.id): b.result()},
    }
    assert store.dependencies(c.id) == [(a.id, True), (b.id, True)]


def test_a_batch_of_completions_releases_the_jobs_waiting_on_them(
    store: Store, clock: Clock
) -> None:
    # Parents deleted on completion, acknowledged together as a prefetching worker does;
    # the lapsed one's dependents stay waiting until its re-run completes.
    a, b, lapsed = (store.enqueue(Step(name)) for name in ("a", "b", "lapsed"))
    both = store.enqueue(Step("both"), keep_result=True, after=[a, b])
    later = store.enqueue(Step("later"), keep_result=True, after=[lapsed, a])
    held = store.claim_many("o", lease=10, limit=5)
    assert [m.id for m in held] == [a.id, b.id, lapsed.id]
    clock.advance(11)
    store.renew_leases(held[:2], lease=10)
    assert [m.id for m in store.detect_hung_jobs()] == [lapsed.id]
    lost = store.complete_many(held)
    assert [e.job_id for e in lost] == [lapsed.id]
    assert store.dependencies(both.id) == [(a.id, True), (b.id, True)]
    assert not store.get(both.id).waiting and store.get(later.id).waiting
    assert store.dependencies(later.id) == [(a.id, True), (lapsed.id, False)]
    assert drain(store) == 3  # both, lapsed's re-run, then later
    assert later.result()["before"] == {}  # (its parents kept no result)
    assert store.count() == 2


def test_waiting_jobs_are_not_due(store: Store, clock: Clock) -> None:
    a = store.enqueue(Step("a"), delay=60)
    b = store.enqueue(Step("b"), after=[a], delay=10)
    assert store.next_run_at() == pytest.approx(clock() + 60)
    assert store.get(b.id).run_at.timestamp() == pytest.approx(clock() + 10, abs=0.01)
    (queued,) = [c for c in store.summary() if c.status is Status.QUEUED]
    assert (queued.count, queued.due) == (2, 0)
    clock.advance(61)
    assert drain(store) == 2


def test_a_failing_dependency_fails_its_dependents_transitively(store: Store) -> None:
    bad = store.enqueue(Breaks())
    child = store.enqueue(Step("child"), after=[bad])
    grandchild = store.enqueue(Step("grandchild"), after=[child], keep_result=True)
    other = store.enqueue(Step("other"), keep_result=True)
    sibling = store.enqueue(Step("sibling"), after=[other, child])
    drain(store, raise_errors=False)
    assert store.get(bad.id).status is Status.FAILED
    assert store.get(child.id).error == f"dependency {bad.id} failed"
    assert store.get(grandchild.id).error == f"dependency {child.id} failed"
    assert store.get(sibling.id).error == f"dependency {child.id} failed"
    for job in (child, grandchild, sibling):
        assert store.get(job.id).attempts == 0  # never ran
    with pytest.raises(liteq.JobFailed, match="dependency"):
        grandchild.result()
    # A new dependent of a failed job fails at once.
    late = store.enqueue(Step("late"), after=[bad])
    assert (late.status, late.error) == (Status.FAILED, f"dependency {bad.id} failed")


def test_retrying_the_dependency_then_the_dependents_runs_them(store: Store) -> None:
    bad = store.enqueue(Breaks())
    child = store.enqueue(Step("child"), after=[bad], keep_result=True)
    drain(store, raise_errors=False)
    with pytest.raises(liteq.InvalidState, match="retry that one first"):
        store.get(child.id).retry()
    # Mended (here: replaced by a job that works), the failed one is retried, then its
    # dependents: they wait for it again.
    assert store.get(bad.id).retry(mulligan=True)
    assert store.get(child.id).retry()
    assert store.get(child.id).waiting
    store.delete(bad.id)  # (a deleted dependency fails its dependents)
    assert store.get(child.id).error == f"dependency {bad.id} was deleted"
    fixed = store.enqueue(Step("fixed"), keep_result=True)
    child2 = store.enqueue(Step("child2"), after=[fixed], keep_result=True)
    drain(store)
    assert child2.result()["before"] == {str(fixed.id): {"name": "fixed", "before": {}}}


def test_missing_dependencies_and_completed_ones(store: Store) -> None:
    before = store.count()
    with pytest.raises(liteq.JobNotFound, match="no job with id 999"):
        store.enqueue(Step("x"), after=[999])
    with pytest.raises(TypeError):
        store.enqueue(Step("x"), after=5)  # type: ignore[arg-type]
    assert store.count() == before
    done = store.enqueue(Step("done"))  # deleted as it completes
    drain(store)
    after_done = store.enqueue(Step("after"), after=[done])  # its ManagedJob: it was
    assert not after_done.waiting
    assert drain(store) == 1


def test_a_coalesced_enqueue_keeps_the_holders_dependencies(store: Store) -> None:
    a = store.enqueue(Step("a"))
    b = store.enqueue(Step("b"))
    first = store.enqueue(Step("x"), coalesce_id="k", after=[a])
    again = store.enqueue(Step("x"), coalesce_id="k", after=[b])
    assert again.id == first.id
    assert store.dependencies(first.id) == [(a.id, False)]
