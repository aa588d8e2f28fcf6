"""The `store` fixture: every contract test runs on every store."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import liteq
from liteq.stores.sqlite import transaction as sqlite_transaction
from tests import pg

# Hypothesis profiles: "ci" (the default) keeps the suite fast; "soak" runs far more
# examples: LITEQ_HYPOTHESIS_PROFILE=soak pytest tests/test_model.py tests/test_concurrency.py
settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "soak",
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("LITEQ_HYPOTHESIS_PROFILE", "ci"))


class Clock:
    """A clock the test moves by hand, so scheduling is deterministic."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[..., liteq.stores.BaseStore]


def open_store(kind: str, directory: Path, **kwargs: object) -> liteq.stores.BaseStore:
    """A new store of this kind: the one place a new store joins every contract test.
    Close it with close_store()."""
    if kind == "memory":
        return liteq.MemoryStore(**kwargs)  # type: ignore[arg-type]
    if kind == "sqlite":
        return liteq.SQLiteStore(directory / "jobs.sqlite", **kwargs)  # type: ignore[arg-type]
    if kind == "sqlite-shared":  # an application's database too: Python's sqlite3 beneath
        app = directory / "app.sqlite"
        with contextlib.closing(sqlite3.connect(app)) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        return liteq.SQLiteStore(app, shared=True, **kwargs)  # type: ignore[arg-type]
    if kind == "postgres":  # a schema of its own on the test server
        dsn = pg.dsn_or_skip()
        return liteq.PostgresStore(dsn, schema=pg.new_schema(), **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown store kind {kind!r}")


def close_store(store: liteq.stores.BaseStore) -> None:
    """Close a store open_store() made, and drop what it left on a server."""
    store.close()
    if isinstance(store, liteq.PostgresStore):
        pg.drop_schema(store.schema)


#: The kinds of store every contract test runs on; "sqlite-shared" is a queue kept in an
#: application's SQLite database, through Python's sqlite3 (SQLiteStore's `shared`).
STORES = ["memory", "sqlite", "sqlite-shared", "postgres"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=STORES)
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreFactory]:
    """Build stores of the parametrized kind; a new store kind joins by adding a branch here."""
    made: list[liteq.stores.BaseStore] = []
    # SQLite counts new jobs where read until some hundreds have come: here they join the
    # counters every third id, so that the tests' few jobs move counters too.
    monkeypatch.setattr(sqlite_transaction, "FOLD_EVERY", 3)

    def factory(**kwargs: object) -> liteq.stores.BaseStore:
        store = open_store(request.param, tmp_path, **kwargs)
        made.append(store)
        return store

    yield factory
    for store in made:
        # Whatever the test did, the kept counts agree with a scan of the jobs (unless it
        # left no store to read: a file deleted or broken on purpose).
        try:
            drift = store.check_counts()
        except liteq.errors.LiteqError:
            drift = []
        close_store(store)
        assert drift == [], f"counts kept on {request.param} differ from a scan: {drift}"


@pytest.fixture
def store(make_store: StoreFactory, clock: Clock) -> liteq.stores.BaseStore:
    return make_store(clock=clock)


OWNER = "test-owner"
