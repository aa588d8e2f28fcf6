"""liteq.testing in-process: drain, eager, enqueued and Clock on the plugin's fixtures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import liteq
from liteq import periodic
from liteq.testing import Clock, drain, eager, enqueued, run_schedules

DONE: list[Any] = []


@pytest.fixture(autouse=True)
def _done() -> None:
    DONE.clear()


class Note(liteq.Job):
    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, job: liteq.ManagedJob) -> None:
        DONE.append(self.text)


class Broken(liteq.Job):
    def run(self, job: liteq.ManagedJob) -> None:
        raise KeyError("missing")


class Later(liteq.Job):
    def run(self, job: liteq.ManagedJob) -> liteq.Status:
        return liteq.Status.WAIT_ASYNC

    def resolve_wait_async(self, data: Any) -> liteq.Status:
        return liteq.Status.COMPLETED


class Fanout(liteq.Job):
    def __init__(self, n: int) -> None:
        self.n = n

    def run(self, job: liteq.ManagedJob) -> None:
        job.store.enqueue_many([Note(f"child {i}") for i in range(self.n)])


class AsyncNote(liteq.Job):
    def __init__(self, text: str, child: str | None = None) -> None:
        self.text = text
        self.child = child

    async def run(self, job: liteq.ManagedJob) -> None:
        await asyncio.sleep(0)
        if self.child is not None:
            await job.store.aenqueue(AsyncNote(self.child))
        DONE.append(self.text)


class Waits(liteq.Job):
    """Holds its run until the test lets it go."""

    started = threading.Event()
    go = threading.Event()

    def run(self, job: liteq.ManagedJob) -> None:
        Waits.started.set()
        Waits.go.wait(10)


# -- Clock -------------------------------------------------------------------------------
def test_a_clock_stands_still_until_moved() -> None:
    clock = Clock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock() == clock() == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert clock.advance(timedelta(hours=1)) == datetime(2030, 1, 1, 1, tzinfo=UTC)
    clock.advance(30)
    assert clock.now == datetime(2030, 1, 1, 1, 0, 30, tzinfo=UTC)
    clock.set(datetime(2029, 6, 1, tzinfo=UTC))
    assert clock.now.year == 2029
    with pytest.raises(ValueError, match="naive"):
        clock.set(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="set"):
        clock.advance(-1)


def test_a_clock_drives_a_store_made_elsewhere_and_gives_it_back() -> None:
    with liteq.MemoryStore() as store:
        real = store.clock
        clock = Clock()
        with clock.drive(store):
            assert store.clock is clock
            store.enqueue(Note("later"), delay=60)
            assert drain(store) == 0
            clock.advance(60)
            assert drain(store) == 1
        assert store.clock is real


def test_the_fixtures_run_on_the_fixture_clock(
    liteq_store: liteq.Store, liteq_sqlite_store: liteq.Store, liteq_clock: Clock
) -> None:
    assert isinstance(liteq_store, liteq.MemoryStore)
    assert isinstance(liteq_sqlite_store, liteq.SQLiteStore)
    assert liteq_store.clock is liteq_clock and liteq_sqlite_store.clock is liteq_clock


# -- drain -------------------------------------------------------------------------------
def test_drain_on_a_sqlite_file_reaches_delays_and_backoffs(
    liteq_sqlite_store: liteq.Store, liteq_clock: Clock
) -> None:
    store = liteq_sqlite_store
    store.enqueue(Note("in an hour"), delay=3600)
    failing = store.enqueue(Broken(), max_attempts=2)
    with pytest.raises(KeyError) as raised:
        drain(store)
    assert f"liteq: raised by job {failing.id} (Broken) on attempt 1 of 2; recorded as queued" in (
        raised.value.__notes__
    )
    liteq_clock.advance(3600)
    assert drain(store, raise_errors=False) == 2
    assert DONE == ["in an hour"]
    assert store.get(failing.id).status is liteq.Status.FAILED


def test_drain_keeps_the_status_machine_hooks_coalescing_and_wait_async(
    liteq_clock: Clock,
) -> None:
    seen: list[tuple[int, str, str]] = []
    with liteq.MemoryStore(
        clock=liteq_clock,
        on_status_change=lambda mjob, old, _: seen.append((mjob.id, old.value, mjob.status.value)),
    ) as store:
        first = store.enqueue(Note("once"), coalesce_id="c")
        assert store.enqueue(Note("twice"), coalesce_id="c").id == first.id
        waiting = store.enqueue(Later())
        assert drain(store) == 2
        assert DONE == ["once"]
        assert store.get(waiting.id).status is liteq.Status.WAIT_ASYNC
    assert (first.id, "running", "completed") in seen
    assert (waiting.id, "running", "wait_async") in seen


def test_drain_serves_only_the_queues_given(liteq_store: liteq.Store) -> None:
    liteq_store.enqueue(Note("mail"), queue="mail")
    liteq_store.enqueue(Note("other"))
    assert drain(liteq_store, queues=["mail"]) == 1
    assert DONE == ["mail"]
    assert [m.job_type for m in enqueued(liteq_store)] == ["tests.test_testing.Note"]


def test_drain_follows_jobs_that_jobs_enqueue(liteq_store: liteq.Store) -> None:
    liteq_store.enqueue(Fanout(3))
    liteq_store.enqueue(AsyncNote("async", child="async child"))
    assert drain(liteq_store) == 6
    assert sorted(DONE) == ["async", "async child", "child 0", "child 1", "child 2"]


def test_drain_checks_max_jobs(liteq_store: liteq.Store) -> None:
    with pytest.raises(ValueError, match="max_jobs"):
        drain(liteq_store, max_jobs=0)
    liteq_store.enqueue_many([Note(str(i)) for i in range(3)])
    assert drain(liteq_store, max_jobs=3) == 3  # exactly as many: no error


# -- enqueued ------------------------------------------------------------------------------
def test_enqueued_lists_waiting_jobs_decoded(liteq_store: liteq.Store) -> None:
    liteq_store.enqueue(Note("a"), queue="mail")
    liteq_store.enqueue(Note("b"), delay=60)
    liteq_store.enqueue(Later())
    assert [m.job.text for m in enqueued(liteq_store, Note)] == ["a", "b"]  # type: ignore[union-attr]
    assert len(enqueued(liteq_store, "tests.test_testing.Later")) == 1
    assert [m.queue for m in enqueued(liteq_store, queue="mail")] == ["mail"]
    with pytest.raises(TypeError, match="job_type"):
        enqueued(liteq_store, 42)  # type: ignore[arg-type]
    assert DONE == []


# -- eager -------------------------------------------------------------------------------
def test_eager_runs_each_job_as_it_is_enqueued_then_gives_the_store_back(
    liteq_store: liteq.Store, liteq_clock: Clock
) -> None:
    with eager(liteq_store):
        mjob = liteq_store.enqueue(Note("now"))
        assert DONE == ["now"] and mjob.status is liteq.Status.COMPLETED
        liteq_store.enqueue_many([Note("x"), Note("y")], queue="other")
        assert DONE == ["now", "x", "y"]
        later = liteq_store.enqueue(Note("in a minute"), delay=60)
        assert later.status is liteq.Status.QUEUED  # a delay holds, as in production
        assert asyncio.run(liteq_store.aenqueue(AsyncNote("a", child="b"))).id > 0
        assert DONE[-2:] == ["b", "a"]  # the child ran inside its parent, at once
        with pytest.raises(KeyError):
            liteq_store.enqueue(Broken())
    assert "enqueue" not in vars(liteq_store)  # the store's own methods again
    liteq_store.enqueue(Note("queued"))
    liteq_clock.advance(60)
    assert drain(liteq_store) == 2


def test_eager_refuses_nesting_and_two_threads_at_once(liteq_store: liteq.Store) -> None:
    with eager(liteq_store):
        with pytest.raises(liteq.LiteqError, match="already on"), eager(liteq_store):
            pass
        Waits.started.clear()
        Waits.go.clear()
        other = threading.Thread(target=liteq_store.enqueue, args=(Waits(),))
        other.start()
        try:
            assert Waits.started.wait(10)
            with pytest.raises(liteq.LiteqError, match="another thread"):
                liteq_store.enqueue(Note("meanwhile"))
        finally:
            Waits.go.set()
            other.join(10)
        liteq_store.enqueue(Note("after"))  # one at a time from two threads is fine
    assert DONE == ["after"]


def test_eager_refuses_what_enqueue_refuses(liteq_store: liteq.Store) -> None:
    with pytest.raises(TypeError) as plain:
        liteq_store.enqueue(Note(datetime.now(UTC)))  # type: ignore[arg-type]
    with eager(liteq_store), pytest.raises(TypeError) as eagerly:
        liteq_store.enqueue(Note(datetime.now(UTC)))  # type: ignore[arg-type]
    assert str(eagerly.value).split("(")[0] == str(plain.value).split("(")[0]
    assert liteq_store.count() == 0


# -- run_schedules ---------------------------------------------------------------------------
def at_slot(scheduled_at: datetime) -> None:
    DONE.append(scheduled_at)


@pytest.fixture
def hourly(liteq_store: liteq.Store) -> Iterator[periodic.Periodic]:
    p = liteq_store.periodic(every=3600, name="test_testing.hourly")(at_slot)
    yield p
    periodic.unregister(p.name)


def test_run_schedules_enqueues_the_due_slots_for_drain_to_run(
    liteq_store: liteq.Store, liteq_clock: Clock, hourly: periodic.Periodic
) -> None:
    liteq_clock.set(datetime(2030, 1, 1, 2, 30, tzinfo=UTC))
    assert run_schedules(liteq_store, hourly) == []  # first seen: it starts now
    assert drain(liteq_store) == 0  # drain schedules nothing
    liteq_clock.advance(timedelta(minutes=29, seconds=59))
    assert run_schedules(liteq_store, hourly) == []
    liteq_clock.advance(1)
    [mjob] = run_schedules(liteq_store, hourly)
    assert mjob.queue == hourly.queue
    assert run_schedules(liteq_store, hourly) == []  # one job per slot
    assert DONE == []  # enqueued, not run
    assert drain(liteq_store) == 1
    [slot] = DONE
    assert slot == datetime(2030, 1, 1, 3, tzinfo=UTC)
    liteq_clock.advance(timedelta(hours=5))  # catch_up=1: the latest slot missed, once
    assert len(run_schedules(liteq_store, hourly)) == 1
    assert drain(liteq_store) == 1
    assert DONE[-1] == datetime(2030, 1, 1, 8, tzinfo=UTC)


def test_run_schedules_skips_a_paused_queue_and_takes_only_schedules(
    liteq_store: liteq.Store, liteq_clock: Clock, hourly: periodic.Periodic
) -> None:
    run_schedules(liteq_store, hourly)
    liteq_store.pause(hourly.queue)
    liteq_clock.advance(3600)
    assert run_schedules(liteq_store, hourly) == []
    with pytest.raises(TypeError, match="give the schedules"):
        run_schedules(liteq_store)
    with pytest.raises(TypeError, match=r"what @store\.periodic returns"):
        run_schedules(liteq_store, at_slot)  # type: ignore[arg-type]


def test_run_schedules_on_a_sqlite_file(
    liteq_sqlite_store: liteq.Store, liteq_clock: Clock, hourly: periodic.Periodic
) -> None:
    liteq_clock.set(datetime(2030, 1, 1, 2, 59, tzinfo=UTC))
    run_schedules(liteq_sqlite_store, hourly)
    liteq_clock.advance(60)
    assert len(run_schedules(liteq_sqlite_store, hourly)) == 1
    assert drain(liteq_sqlite_store) == 1
    [slot] = DONE
    assert slot == datetime(2030, 1, 1, 3, tzinfo=UTC)
