"""The shop's tests: the recipe of liteq's docs/testing.md."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from shop import jobs
from shop.signup import signup

import liteq
from liteq.testing import Clock, drain, enqueued, run_schedules


@pytest.fixture(autouse=True)
def _sent() -> Iterator[None]:
    jobs.SENT.clear()  # each test starts with nothing sent
    yield
    jobs.SENT.clear()


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


def test_a_delayed_job_runs_only_after_advance(
    liteq_store: liteq.Store, liteq_clock: Clock
) -> None:
    signup("ann@example.com")
    drain(liteq_store)
    assert jobs.SENT == ["welcome ann@example.com"]
    liteq_clock.advance(3599)
    assert drain(liteq_store) == 0
    liteq_clock.advance(1)
    assert drain(liteq_store) == 1
    assert jobs.SENT[-1] == "reminder ann@example.com"


def test_a_retry_with_backoff_is_reached_by_advance(
    liteq_store: liteq.Store, liteq_clock: Clock
) -> None:
    jobs.FAILURES["left"] = 1
    mjob = jobs.flaky_export.enqueue("march")
    with pytest.raises(ConnectionError):
        drain(liteq_store)
    assert liteq_store.get(mjob.id).status is liteq.Status.QUEUED
    assert drain(liteq_store) == 0  # its backoff has not passed
    liteq_clock.advance(60)
    assert drain(liteq_store) == 1
    assert jobs.SENT == ["exported march"]


@pytest.mark.parametrize("hour", [12, 23])
def test_the_daily_report_runs_at_midnight(
    liteq_sqlite_store: liteq.Store, liteq_clock: Clock, hour: int
) -> None:
    # A store of this test's own: the app's store keeps each schedule's last slot.
    liteq_clock.set(datetime(2030, 1, 1, hour, tzinfo=UTC))  # a worker starts
    assert run_schedules(liteq_sqlite_store, jobs.daily_report) == []  # first seen: from now
    liteq_clock.set(datetime(2030, 1, 1, 23, 59, 59, tzinfo=UTC))
    assert run_schedules(liteq_sqlite_store, jobs.daily_report) == []
    liteq_clock.advance(1)  # midnight
    assert len(run_schedules(liteq_sqlite_store, jobs.daily_report)) == 1
    assert drain(liteq_sqlite_store) == 1
    assert jobs.SENT == ["report 2030-01-02"]
