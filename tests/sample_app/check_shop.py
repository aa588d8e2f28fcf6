"""The sample application's tests. Those named *_fails are meant to fail: the test that
runs this file checks that they do, and how."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shop import jobs
from shop.jobs import close_month, flaky_export, notify, poll_forever, send_invoice
from shop.signup import signup

import liteq
from liteq.testing import drain, eager, enqueued


@pytest.fixture(autouse=True)
def _sent() -> Iterator[None]:
    jobs.SENT.clear()
    yield
    jobs.SENT.clear()


def test_the_store_is_the_apps(liteq_store: liteq.Store) -> None:
    assert liteq_store is jobs.store
    assert isinstance(liteq_store, liteq.MemoryStore)


def test_signup_sends_a_welcome_mail(liteq_store: liteq.Store) -> None:
    signup("ann@example.com")
    assert drain(liteq_store) == 1
    assert jobs.SENT == ["welcome ann@example.com"]


def test_enqueued_finds_the_mail_without_sending_it(liteq_store: liteq.Store) -> None:
    signup("ann@example.com")
    [mail] = enqueued(liteq_store, jobs.send_welcome)
    assert mail.job is not None and mail.job.args == ["ann@example.com"]
    assert mail.queue == "mail"
    assert [m.job_type for m in enqueued(liteq_store)] == [
        "shop.jobs.send_welcome",
        "shop.jobs.remind",
    ]
    assert jobs.SENT == []


def test_a_delayed_job_runs_only_after_advance(liteq_store: liteq.Store, liteq_clock) -> None:
    signup("ann@example.com")
    drain(liteq_store)
    assert jobs.SENT == ["welcome ann@example.com"]
    liteq_clock.advance(3599)
    assert drain(liteq_store) == 0
    liteq_clock.advance(1)
    assert drain(liteq_store) == 1
    assert jobs.SENT[-1] == "reminder ann@example.com"


def test_a_retry_with_backoff_is_reached_by_advance(liteq_store: liteq.Store, liteq_clock) -> None:
    jobs.FAILURES["left"] = 1
    mjob = flaky_export.enqueue("march")
    with pytest.raises(ConnectionError):
        drain(liteq_store)
    assert liteq_store.get(mjob.id).status is liteq.Status.QUEUED
    assert drain(liteq_store) == 0  # its backoff has not passed
    liteq_clock.advance(60)
    assert drain(liteq_store) == 1
    assert jobs.SENT == ["exported march"]


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


# -- meant to fail -------------------------------------------------------------------------
def test_a_broken_job_fails(liteq_store: liteq.Store) -> None:
    send_invoice.enqueue(1042)
    drain(liteq_store)


def test_a_broken_job_fails_eagerly(liteq_store: liteq.Store) -> None:
    with eager(liteq_store):
        send_invoice.enqueue(1043)
