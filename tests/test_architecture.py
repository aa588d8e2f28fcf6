"""docs/architecture.md against the code: the primitives it lists, the orders it says are
written once, and the roles of the store contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import liteq
from liteq.managed import ManagedJob
from liteq.stores import contract
from liteq.stores.contract import AppStore, Backend, OperatorStore, Tx, WorkerStore
from liteq.stores.registry import Registry, RegistryWrite
from liteq.stores.sqlite import queries as sqlite_queries
from liteq.stores.sqlite.schema import schema_sql

ROOT = Path(__file__).resolve().parents[1]
PRIMITIVES: dict[str, type] = {
    "Tx": Tx,
    "Backend": Backend,
    "Registry": Registry,
    "RegistryWrite": RegistryWrite,
}


def backend_section() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text.split("## The contract a backend implements", 1)[1].split("\n## ", 1)[0]


def test_the_docs_name_every_primitive_and_only_primitives() -> None:
    named = set(re.findall(r"`(Tx|Backend|Registry|RegistryWrite)\.(\w+)", backend_section()))
    for owner, name in sorted(named):
        assert hasattr(PRIMITIVES[owner], name), f"docs/architecture.md names {owner}.{name}"
    for owner, cls in PRIMITIVES.items():
        for name in sorted(cls.__abstractmethods__):
            assert (owner, name) in named, f"docs/architecture.md does not name {owner}.{name}"


def test_the_sqlite_claim_index_follows_the_claim_order() -> None:
    order = sqlite_queries._SQL["claim_order"]
    index = re.search(r"CREATE INDEX liteq_jobs_claim ON liteq_jobs \(([^)]*)\)", schema_sql())
    assert index is not None
    assert index.group(1) == f"queue, {order}"
    for name in ("pick_in_queue", "pick_in_only_queue", "pick_in_queues"):
        assert "priority" not in sqlite_queries._SQL[name]  # each takes {claim_order}


def test_the_roles_make_the_store() -> None:
    def members(role: type) -> set[str]:
        return {
            name
            for name in vars(role)
            if not name.startswith("_") and (callable(vars(role)[name]) or name == "clock")
        } | set(getattr(role, "__annotations__", {}))

    app, worker, operator = members(AppStore), members(WorkerStore), members(OperatorStore)
    assert not (app & worker) - {"clock"} and not (operator & worker) - {"clock"}
    assert {"enqueue", "get", "retry", "locked"} <= app
    assert {"claim", "complete_and_claim", "beat"} <= worker and "claim" not in app
    assert {OperatorStore, WorkerStore, AppStore} <= set(contract.Store.__mro__)
    assert AppStore in OperatorStore.__mro__
    assert ManagedJob.store.fget.__annotations__["return"] == "AppStore"  # type: ignore[union-attr]


@pytest.mark.parametrize("make", [liteq.MemoryStore])
def test_a_store_is_every_role(make: type[liteq.MemoryStore]) -> None:
    store = make()
    assert isinstance(store, liteq.Store)
    assert all(isinstance(store, role) for role in (AppStore, WorkerStore, OperatorStore))
    store.close()
