"""The pytest plugin (the `pytest11` entry point `liteq`): fixtures, and the ini options
that make an application's own module-level store the test store.

Fixtures: `liteq_clock` (a Clock), `liteq_store` (a fresh MemoryStore on that clock; or the
application's store named by the `liteq_store` ini option, emptied around each test and
driven by that clock), `liteq_sqlite_store` (a fresh SQLite file in tmp_path on that clock).
Ini options: `liteq_url` (LITEQ_URL for the whole run, set before any conftest.py is
imported) and `liteq_store` (`module:attribute` of the application's store). Off with
`-p no:liteq`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from liteq.stores.base import BaseStore
from liteq.stores.contract import Store
from liteq.stores.memory import MemoryStore
from liteq.stores.sqlite import SQLiteStore
from liteq.testing.clock import Clock

_URL_INI = "liteq_url"
_STORE_INI = "liteq_store"
#: LITEQ_URL as it was before this plugin set it (restored at the end of the run).
_saved_url = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _URL_INI,
        "LITEQ_URL for the tests, set before conftest.py files (and so the application) "
        "are imported, whatever the environment holds: memory:// for a store in memory",
        default="",
    )
    parser.addini(
        _STORE_INI,
        "module:attribute of the application's store (e.g. myapp.jobs:store): the "
        "liteq_store fixture is then that store, emptied around each test",
        default="",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    url = early_config.getini(_URL_INI)
    if url:
        early_config.stash[_saved_url] = os.environ.get("LITEQ_URL")
        os.environ["LITEQ_URL"] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _saved_url in config.stash:
        before = config.stash[_saved_url]
        if before is None:
            os.environ.pop("LITEQ_URL", None)
        else:
            os.environ["LITEQ_URL"] = before


@pytest.fixture
def liteq_clock() -> Clock:
    """A clock that stands still until the test moves it (`advance`, `set`); the store
    fixtures run on it."""
    return Clock()


@pytest.fixture
def liteq_store(request: pytest.FixtureRequest, liteq_clock: Clock) -> Iterator[Store]:
    """A fresh MemoryStore on `liteq_clock`, closed after the test; or, with the ini option
    `liteq_store = module:attribute`, the application's own store, emptied before and after
    the test and driven by `liteq_clock` meanwhile."""
    named = request.config.getini(_STORE_INI)
    if not named:
        with MemoryStore(clock=liteq_clock) as store:
            yield store
        return
    app_store = _app_store(named)
    _empty(app_store)
    with liteq_clock.drive(app_store):
        yield app_store
    _empty(app_store)


@pytest.fixture
def liteq_sqlite_store(tmp_path: Path, liteq_clock: Clock) -> Iterator[Store]:
    """A fresh SQLite queue file in `tmp_path` (the real engine) on `liteq_clock`, closed
    after the test."""
    with SQLiteStore(tmp_path / "liteq.sqlite", clock=liteq_clock) as store:
        yield store


def _app_store(named: str) -> Store:
    module_name, _, attribute = named.partition(":")
    if not module_name or not attribute:
        raise pytest.UsageError(
            f"ini option {_STORE_INI} = {named!r}: give module:attribute, e.g. myapp.jobs:store"
        )
    store = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(store, BaseStore):
        raise pytest.UsageError(f"ini option {_STORE_INI}: {named} is not a liteq store")
    return store


def _empty(store: Store) -> None:
    """Delete every job of `store` and resume its paused queues (between tests). Its
    schedules' rows stay (each periodic job's last slot): no store call deletes them."""
    for mjob in list(store.jobs()):
        store.delete(mjob.id)
    for queue in store.paused():
        store.resume(queue)
