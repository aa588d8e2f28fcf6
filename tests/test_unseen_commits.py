"""A worker's claim whose commit went through unseen, on every store.

tests/test_postgres.py loses a real reply to a commit (a proxy); here the same happens on
every store: one transaction that completes and claims jobs commits, then its caller gets
the error of a connection lost while committing (on SQLite: an error after COMMIT). The
worker's rule must not depend on which store it runs on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import liteq
from liteq import Status
from liteq.record import Record as Row
from liteq.stores.contract import Tx
from tests.jobs import Record


def lose_one_reply(store: liteq.stores.BaseStore) -> list[bool]:
    """Make the first transaction of `store` that completes and claims jobs raise, once
    committed, as a connection lost while committing does; the list returned holds True
    once it has. (The store's own steps, seen from the outside: which transaction
    completed jobs and which claimed some.)"""
    real_transaction, real_complete, real_claim = (
        store._transaction,
        store._complete_in,
        store._claim_in,
    )
    completed: set[int] = set()
    claimed: set[int] = set()
    lost: list[bool] = []

    def complete_in(tx: Tx, mjobs: Sequence[liteq.ManagedJob], *args: Any) -> Any:
        if mjobs:
            completed.add(id(tx))
        return real_complete(tx, mjobs, *args)

    def claim_in(tx: Tx, *args: Any) -> list[Row]:
        rows = real_claim(tx, *args)
        if rows:
            claimed.add(id(tx))
        return rows

    @contextlib.contextmanager
    def transaction(prompt: bool = False) -> Iterator[Tx]:
        with real_transaction(prompt) as tx:
            completed.discard(id(tx))
            claimed.discard(id(tx))
            yield tx
        if id(tx) in completed and id(tx) in claimed and not lost:  # committed
            lost.append(True)
            raise liteq.StoreUnavailable("the connection was lost while committing")

    store._transaction = transaction  # type: ignore[method-assign]
    store._complete_in = complete_in  # type: ignore[method-assign]
    store._claim_in = claim_in  # type: ignore[method-assign]
    return lost


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [1, 3])
def test_jobs_claimed_unseen_go_back_at_once_on_every_store(
    store: liteq.stores.BaseStore, prefetch: int, caplog: pytest.LogCaptureFixture
) -> None:
    Record.ran.clear()
    jobs = store.enqueue_many([Record(i) for i in range(8)], delete_on_complete=False)
    lost = lose_one_reply(store)
    worker = liteq.Worker(store, exit_if_no_jobs=True, jitter=False, prefetch=prefetch)
    with caplog.at_level(logging.INFO, logger="liteq"):
        assert worker.start() == 0
    assert lost
    assert sorted(Record.ran) == list(range(8))  # each once, none left behind
    found = [store.get(m.id) for m in jobs]
    assert [m.status for m in found] == [Status.COMPLETED] * 8
    assert [(m.attempts, m.record.crashes) for m in found] == [(1, 0)] * 8
    assert "the commit had gone through: completed" in caplog.text
    assert "claimed by a commit whose reply was lost: handed back unstarted" in caplog.text
