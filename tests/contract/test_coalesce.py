"""Coalescing: one job per coalesce_id while it is queued, running, waiting or failed."""

from __future__ import annotations

import pytest

import liteq
from liteq import Status
from tests.conftest import OWNER
from tests.jobs import Coalesced, Fails, Noop, Waits


def test_duplicate_returns_the_holder_and_creates_nothing(store: liteq.stores.BaseStore) -> None:
    first = store.enqueue(Noop(1), coalesce_id="k")
    second = store.enqueue(Noop(2), coalesce_id="k", priority=9)
    assert second.id == first.id and second.priority == 0
    assert store.count() == 1
    got = store.get_by_coalesce_id("k")
    assert got is not None and got.id == first.id
    assert store.get_by_coalesce_id("other") is None


def test_coalesce_id_from_the_job(store: liteq.stores.BaseStore) -> None:
    a = store.enqueue(Coalesced("x"))
    assert a.coalesce_id == "coalesced-x"
    assert store.enqueue(Coalesced("x")).id == a.id
    assert store.enqueue(Coalesced("y")).id != a.id
    assert store.enqueue(Coalesced("x"), coalesce_id=None).id != a.id


def test_enqueue_many_coalesces_within_and_across(store: liteq.stores.BaseStore) -> None:
    held = store.enqueue(Noop(0), coalesce_id="a")
    mjobs = store.enqueue_many([Noop(1), Noop(2)], coalesce_id="a")
    assert {m.id for m in mjobs} == {held.id}
    assert store.count() == 1


@pytest.mark.parametrize("status", [Status.RUNNING, Status.WAIT_ASYNC, Status.FAILED])
def test_running_waiting_and_failed_jobs_hold_the_id(
    store: liteq.stores.BaseStore, status: Status
) -> None:
    held = store.enqueue(Waits() if status is Status.WAIT_ASYNC else Fails(), coalesce_id="k")
    mjob = store.claim(OWNER)
    assert mjob is not None
    if status is Status.WAIT_ASYNC:
        store.wait_async(mjob)
    elif status is Status.FAILED:
        store.fail(mjob, "boom")
    assert store.get(held.id).status is status
    assert store.enqueue(Noop(), coalesce_id="k").id == held.id


def test_completed_and_deleted_jobs_release_the_id(store: liteq.stores.BaseStore) -> None:
    kept = store.enqueue(Noop(), coalesce_id="k", delete_on_complete=False)
    mjob = store.claim(OWNER)
    assert mjob is not None
    store.complete(mjob)
    assert store.get(kept.id).status is Status.COMPLETED
    assert store.get_by_coalesce_id("k") is None
    new = store.enqueue(Noop(), coalesce_id="k")
    assert new.id != kept.id
    with pytest.raises(liteq.InvalidState, match="holds its coalesce id"):
        store.get(kept.id).restart()
    new.delete()
    store.get(kept.id).restart()
    assert store.get_by_coalesce_id("k").id == kept.id  # type: ignore[union-attr]
