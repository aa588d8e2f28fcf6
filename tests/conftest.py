"""The `store` fixture: every contract test runs on every store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import liteq


class Clock:
    """A clock the test moves by hand, so scheduling is deterministic."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[..., liteq.stores.BaseStore]

STORES = ["memory", "sqlite"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Build stores of the parametrized kind; a new store kind joins by adding a branch here."""
    made: list[liteq.stores.BaseStore] = []

    def factory(**kwargs: object) -> liteq.stores.BaseStore:
        if request.param == "memory":
            store: liteq.stores.BaseStore = liteq.MemoryStore(**kwargs)  # type: ignore[arg-type]
        else:
            store = liteq.SQLiteStore(tmp_path / "jobs.sqlite", **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory, clock: Clock) -> liteq.stores.BaseStore:
    return make_store(clock=clock)


OWNER = "test-owner"
