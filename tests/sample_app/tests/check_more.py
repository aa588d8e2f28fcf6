"""More of the sample application's tests, for liteq's own checks of the plugin (not in the
recipe). Those named *_fails are meant to fail: the test that runs this file checks that
they do, and how."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shop import jobs
from shop.more_jobs import close_month, notify, poll_forever, send_invoice

import liteq
from liteq.testing import Clock, drain, eager, run_schedules


@pytest.fixture(autouse=True)
def _sent() -> Iterator[None]:
    jobs.SENT.clear()
    yield
    jobs.SENT.clear()


def test_the_store_is_the_apps(liteq_store: liteq.Store) -> None:
    assert liteq_store is jobs.store
    assert isinstance(liteq_store, liteq.MemoryStore)


def test_drain_follows_jobs_enqueued_by_jobs(liteq_store: liteq.Store) -> None:
    close_month.enqueue(["a@example.com", "b@example.com"])
    assert drain(liteq_store) == 3
    assert sorted(jobs.SENT) == ["welcome a@example.com", "welcome b@example.com"]


def test_a_coroutine_job_is_drained(liteq_store: liteq.Store) -> None:
    notify.enqueue(7)
    assert drain(liteq_store) == 1
    assert jobs.SENT == ["notified 7"]


def test_eager_runs_at_once_and_refuses_what_enqueue_refuses(liteq_store: liteq.Store) -> None:
    with pytest.raises(TypeError) as refused_by_enqueue:
        jobs.send_welcome.enqueue({"not", "json"})
    with eager(liteq_store):
        jobs.send_welcome.enqueue("ann@example.com")
        assert jobs.SENT == ["welcome ann@example.com"]
        with pytest.raises(TypeError) as refused_eagerly:
            jobs.send_welcome.enqueue({"not", "json"})
    assert str(refused_eagerly.value) == str(refused_by_enqueue.value)
    assert liteq_store.count() == 0


def test_a_job_that_enqueues_itself_forever_stops_at_max_jobs(liteq_store: liteq.Store) -> None:
    poll_forever.enqueue(0)
    with pytest.raises(liteq.LiteqError, match="max_jobs=100"):
        drain(liteq_store, max_jobs=100)


def test_a_sqlite_file_of_its_own(liteq_sqlite_store: liteq.Store) -> None:
    assert isinstance(liteq_sqlite_store, liteq.SQLiteStore)


def test_the_apps_store_runs_a_schedule(liteq_store: liteq.Store, liteq_clock: Clock) -> None:
    # Once a session on the app's store: its schedules' rows outlive a test.
    assert run_schedules(liteq_store, jobs.daily_report) == []
    liteq_clock.advance(24 * 3600)
    assert len(run_schedules(liteq_store, jobs.daily_report)) == 1
    assert drain(liteq_store) == 1 and jobs.SENT[0].startswith("report ")


# -- meant to fail -------------------------------------------------------------------------
def test_a_broken_job_fails(liteq_store: liteq.Store) -> None:
    send_invoice.enqueue(1042)
    drain(liteq_store)


def test_a_broken_job_fails_eagerly(liteq_store: liteq.Store) -> None:
    with eager(liteq_store):
        send_invoice.enqueue(1043)
