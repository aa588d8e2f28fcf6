"""liteq with one more column: run as a program by tests/test_columns.py.

    python -m tests.widened KIND DIRECTORY [DSN SCHEMA]

It imports liteq with `Record` widened as a new column would widen it: a field `dummy`
(default "from the record") among the others, which it also shuffles, so that no field
keeps its place. Nothing else of liteq is changed; the store's table gains the column as a
migration would add it, with a default of its own ("from the table"), at the end. Then it
writes and reads jobs through every path (enqueue one, many alike, many not, coalesced;
claims; updates; fenced writes; reads) and checks that each carries the column: a path
that wrote or read by position, or left a column out, fails here. Exit status 0: all did.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: What a new job holds in the column (Record's default), and what a row that a write left
#: the column out of holds (the table's).
FROM_RECORD, FROM_TABLE = "from the record", "from the table"


def widened(source: str) -> str:
    """record.py's source with Record given a field `dummy` and its fields shuffled: those
    without a default reversed, then `dummy`, then those with one reversed."""
    tree = ast.parse(source)
    (record,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Record"]
    fields = [n for n in record.body if isinstance(n, ast.AnnAssign)]
    rest = [n for n in record.body if not isinstance(n, ast.AnnAssign)]
    required = [f for f in fields if f.value is None]
    defaulted = [f for f in fields if f.value is not None]
    dummy = ast.parse(f"dummy: str = {FROM_RECORD!r}").body[0]
    record.body = [*rest, *reversed(required), dummy, *reversed(defaulted)]
    return ast.unparse(tree)


class _Widen(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports liteq.record from widened() source; every other module as it is."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "liteq.record":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        spec.loader = self
        return spec

    def exec_module(self, module: ModuleType) -> None:
        path = str(module.__spec__.origin if module.__spec__ else module.__file__)
        code = compile(widened(Path(path).read_text(encoding="utf-8")), path, "exec")
        exec(code, module.__dict__)  # noqa: S102 - liteq's own source, widened


sys.meta_path.insert(0, _Widen())

import liteq  # noqa: E402 - after the widening, on purpose
from liteq.record import COLUMNS, Record, evolve  # noqa: E402
from liteq.stores.contract import JobQuery  # noqa: E402
from tests.jobs import Coalesced, DefaultOptions, Fails, Noop, WithOptions  # noqa: E402

OWNER = "widened-owner"
HINTS = typing.get_type_hints(Record)


def check(record: Record, dummy: str, where: str) -> None:
    """`record` holds `dummy`, and each column a value of the type Record gives it."""
    assert record.dummy == dummy, f"{where}: job {record.id}'s dummy is {record.dummy!r}"  # type: ignore[attr-defined]
    for name, hint in HINTS.items():
        value = getattr(record, name)
        assert isinstance(value, hint), f"{where}: job {record.id}'s {name} is {value!r}"


def open_store(kind: str, directory: Path, dsn: str, schema: str) -> Any:
    """A store of this kind, its table given the column as a migration would give it."""
    if kind == "memory":
        return liteq.MemoryStore()
    if kind == "sqlite":
        import apsw

        path = directory / "jobs.sqlite"
        liteq.SQLiteStore(path).close()
        conn = apsw.Connection(str(path))
        conn.execute(
            f"ALTER TABLE liteq_jobs ADD COLUMN dummy TEXT NOT NULL DEFAULT '{FROM_TABLE}'"
        )
        conn.close()
        return liteq.SQLiteStore(path)
    import psycopg

    liteq.PostgresStore(dsn, schema=schema).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE \"{schema}\".jobs ADD COLUMN dummy text NOT NULL DEFAULT '{FROM_TABLE}'".encode()
        )
    return liteq.PostgresStore(dsn, schema=schema)


def set_dummy(store: Any, job_id: int, dummy: str) -> None:
    """Write `dummy` into a job's row with Tx.update (a whole row, read for update)."""
    with store._transaction() as tx:
        record = tx.get(job_id)
        assert record is not None, f"job {job_id} is gone"
        tx.update(evolve(record, dummy=dummy))


def run(store: Any) -> None:
    assert COLUMNS[0] != "id" and "dummy" in COLUMNS, f"Record was not widened: {COLUMNS}"
    new = [
        store.enqueue(Noop(1)),  # one job
        store.enqueue(Coalesced("a")),  # one coalesced (Tx.insert)
        *store.enqueue_many([Noop(i) for i in range(3)]),  # alike, of one type
        *store.enqueue_many([Noop(1), Fails()]),  # alike, of two types
        *store.enqueue_many([DefaultOptions(), Noop(2)]),  # not alike, but agreeing
        *store.enqueue_many([WithOptions(), Noop(3)]),  # not alike
        *store.enqueue_many([Coalesced("b"), Noop(4)]),  # some coalesced
        *store.enqueue_many([Noop(5)], delete_on_complete=False),
    ]
    for mjob in new:
        check(mjob.record, FROM_RECORD, "enqueued")
        check(store.get(mjob.id).record, FROM_RECORD, "read after enqueue")
    for mjob in store.jobs():
        check(mjob.record, FROM_RECORD, "listed")
    for mjob in store.search(JobQuery(limit=100)):
        check(mjob.record, FROM_RECORD, "searched")
    holder = store.get_by_coalesce_id("coalesced-a")
    check(holder.record, FROM_RECORD, "read by coalesce id")

    # Each job's own value, written by Tx.update; then everything that reads it again.
    mine = {mjob.id: f"job {mjob.id}" for mjob in new}
    for job_id, dummy in mine.items():
        set_dummy(store, job_id, dummy)
        check(store.get(job_id).record, dummy, "read after update")
    with store.locked(new[0].id) as locked:  # a user's change: the whole row again
        check(locked.record, mine[new[0].id], "locked")
    check(store.get(new[0].id).record, mine[new[0].id], "read after a lock")

    claimed = [
        store.claim(OWNER),  # any queue
        *store.claim_many(OWNER, queues=["default"], limit=3),  # one queue
        *store.claim_many(OWNER, queues=["default", "from-job"], limit=3),  # some queues
        *store.claim_many(OWNER, limit=2),  # any queue, several
    ]
    for mjob in claimed:
        check(mjob.record, mine[mjob.id], "claimed")
    for record in store.active():
        check(record, mine[record.id], "read as active")
    for mjob in store.held_by(OWNER):
        check(mjob.record, mine[mjob.id], "read as held")

    # Fenced writes, of the column itself and of others beside it.
    first, second, third, fourth, *rest = claimed
    with store._transaction() as tx:
        assert tx.fenced_write(first.record, {"dummy": "fenced"}), "the fenced write failed"
    mine[first.id] = "fenced"
    check(store.get(first.id).record, "fenced", "read after a fenced write")
    assert store.mark_started(second)
    assert len(store.renew_leases([second, third])) == 2
    store.fail(third, "boom")  # re-queued, or failed for good
    for mjob in (second, third):
        check(store.get(mjob.id).record, mine[mjob.id], "read after fenced writes")
    lost, more = store.complete_and_claim([fourth], OWNER, limit=5)
    assert not lost, lost
    for mjob in more:
        check(mjob.record, mine[mjob.id], "claimed on completing")
    assert store.release([first]) == 1
    check(store.get(first.id).record, "fenced", "read after a release")
    kept = [m for m in (*rest, *more) if not m.record.delete_on_complete]
    assert kept, "no job kept on completion was claimed"
    store.complete_many([m for m in (second, *rest, *more)])
    for mjob in kept:
        done = store.get(mjob.id)
        assert done.status is liteq.Status.COMPLETED, done.status
        check(done.record, mine[mjob.id], "read after completion")
    failed = store.get(third.id)
    store.restart(failed)  # the whole row again
    check(store.get(third.id).record, mine[third.id], "read after a restart")


def main(argv: list[str]) -> int:
    kind, directory, *server = argv
    dsn, schema = server or ("", "")
    store = open_store(kind, Path(directory), dsn, schema)
    try:
        run(store)
    finally:
        store.close()
    print(f"every path carried the new column ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
