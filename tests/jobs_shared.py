"""Jobs of tests/test_sqlite_shared.py: each writes the application's own table through
Python's sqlite3, in the worker that claimed it through sqlite3 too (SQLiteStore's shared)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

import liteq


class Send(liteq.Job):
    def __init__(self, item: str) -> None:
        self.item = item

    def run(self, job: liteq.ManagedJob) -> None:
        app_db = sqlite3.connect(os.environ["APP_DB"], timeout=10)
        with contextlib.closing(app_db) as conn, conn:
            conn.execute("CREATE TABLE IF NOT EXISTS sent (item TEXT)")
            conn.execute("INSERT INTO sent VALUES (?)", (self.item,))


def produce(app_db: str, how: str, count: str, label: str, out: str) -> None:
    """Place `count` orders, each with its Send job in the order's transaction, through
    Python's sqlite3 (`how` "sqlite3") or SQLAlchemy; one in three rolls back. Writes the
    committed orders' items to `out` (a child process's entry)."""
    store = liteq.SQLiteStore(app_db, shared=True)
    committed = []
    if how == "sqlalchemy":
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{app_db}", connect_args={"timeout": 20})
        insert = sqlalchemy.text("INSERT INTO orders (item) VALUES (:item)")
        for n in range(int(count)):
            item = f"{label}{n}"
            with contextlib.suppress(_RolledBack), engine.begin() as conn:
                conn.execute(insert, {"item": item})
                store.enqueue(Send(item), connection=conn)
                if n % 3 == 2:
                    raise _RolledBack
                committed.append(item)
        engine.dispose()
    else:
        conn = sqlite3.connect(app_db, timeout=20)
        for n in range(int(count)):
            item = f"{label}{n}"
            with contextlib.suppress(_RolledBack), conn:
                conn.execute("INSERT INTO orders (item) VALUES (?)", (item,))
                store.enqueue(Send(item), connection=conn)
                if n % 3 == 2:
                    raise _RolledBack
                committed.append(item)
        conn.close()
    store.close()
    with open(out, "w") as file:
        json.dump(committed, file)


class _RolledBack(Exception):
    pass
