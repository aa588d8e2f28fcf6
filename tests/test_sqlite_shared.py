"""A queue in the application's own SQLite database (SQLiteStore's `shared`): liteq's tables
beside the application's, Python's sqlite3 beneath, and the outbox: a job enqueued on the
application's connection exists if and only if its transaction commits."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import liteq
from liteq.errors import JobNotFound, StoreError
from liteq.stores.sqlite import stdlib
from tests.helpers import ROOT, wait_until
from tests.jobs_shared import Send

LITEQ = [sys.executable, "-m", "liteq"]


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    """The application's database: a table of its own, a row in it."""
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        conn.execute("INSERT INTO orders (item) VALUES ('first')")
    return path


def test_a_job_exists_if_and_only_if_the_applications_transaction_commits(
    app_db: Path,
) -> None:
    store = liteq.SQLiteStore(app_db, shared=True)
    conn = sqlite3.connect(app_db)  # sqlite3's default: a transaction begun before a write
    try:
        with conn:
            conn.execute("INSERT INTO orders (item) VALUES ('book')")
            kept = store.enqueue(Send("book"), connection=conn)
            # Read in the same transaction: found; from liteq's own connection: not yet.
            assert store.get(kept.id, connection=conn).status == liteq.Status.QUEUED
            with pytest.raises(JobNotFound):
                store.get(kept.id)
        assert store.get(kept.id).status == liteq.Status.QUEUED
        with contextlib.suppress(ZeroDivisionError), conn:
            conn.execute("INSERT INTO orders (item) VALUES ('lost')")
            lost = store.enqueue(Send("lost"), connection=conn)
            1 / 0  # noqa: B018 - the application's error: it rolls back
        # Nothing of the rolled-back transaction is left: neither its row nor its job.
        assert [r[0] for r in conn.execute("SELECT item FROM orders")] == ["first", "book"]
        assert store.count() == 1
        assert lost.id not in [job.id for job in store.jobs()]
        # A job enqueued first in the block still joins it (sqlite3 would begin one).
        with contextlib.suppress(ZeroDivisionError), conn:
            store.enqueue(Send("first thing"), connection=conn)
            1 / 0  # noqa: B018
        assert store.count() == 1
        # In autocommit mode it commits at once.
        conn.isolation_level = None
        store.enqueue(Send("at once"), connection=conn)
        assert store.count() == 2
    finally:
        conn.close()
        store.close()
    with contextlib.closing(sqlite3.connect(app_db)) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_job_refused_inside_the_transaction_leaves_the_applications_rows(
    app_db: Path,
) -> None:
    store = liteq.SQLiteStore(app_db, shared=True)
    conn = sqlite3.connect(app_db)
    try:
        with conn:
            conn.execute("INSERT INTO orders (item) VALUES ('kept')")
            with pytest.raises(ValueError, match="priority"):
                store.enqueue(Send("x"), connection=conn, priority=10**30)
        assert [r[0] for r in conn.execute("SELECT item FROM orders")] == ["first", "kept"]
        assert store.count() == 0
    finally:
        conn.close()
        store.close()


def test_joining_is_refused_where_it_could_not_hold(app_db: Path, tmp_path: Path) -> None:
    own = liteq.SQLiteStore(tmp_path / "jobs.sqlite")  # a queue file of its own
    shared = liteq.SQLiteStore(app_db, shared=True)
    other = sqlite3.connect(tmp_path / "other.db")
    conn = sqlite3.connect(app_db)
    try:
        with pytest.raises(StoreError, match="shared=True"):
            own.enqueue(Send("x"), connection=conn)
        with pytest.raises(StoreError, match="must be a connection to the queue's file"):
            shared.enqueue(Send("x"), connection=other)
        with pytest.raises(TypeError, match="sqlite3 Connection"):
            shared.enqueue(Send("x"), connection="app.db")  # type: ignore[arg-type]
        # The same file opened both ways in one process: two copies of SQLite on it.
        with pytest.raises(StoreError, match="open it one way only"):
            liteq.SQLiteStore(app_db)
        assert shared.count() == 0 and own.count() == 0
    finally:
        for c in (other, conn):
            c.close()
        own.close()
        shared.close()


def test_an_applications_database_is_refused_unless_shared(app_db: Path) -> None:
    with pytest.raises(StoreError, match="another application's database"):
        liteq.SQLiteStore(app_db)
    with contextlib.closing(sqlite3.connect(app_db)) as conn:  # left as it was
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["orders"]
    with pytest.raises(ValueError, match="shared must be 1 or 0"):
        liteq.connect(f"sqlite:///{app_db}?shared=yes")


def test_a_python_whose_sqlite_is_too_old_is_told_so_in_a_sentence() -> None:
    # (Python's own SQLite here is new enough; what an old one is told, and where the line is.)
    assert stdlib.too_old() is None
    assert stdlib.too_old(stdlib.OLDEST) is None
    why = stdlib.too_old((3, 31, 1))
    assert why is not None
    assert "needs SQLite 3.39.0 or newer in Python's sqlite3, which has 3.31.1" in why


def test_a_worker_runs_what_the_application_committed(app_db: Path, tmp_path: Path) -> None:
    # The worker's tasks write the application's table through sqlite3 while liteq claims
    # and acknowledges through sqlite3 too, in the same process.
    store = liteq.SQLiteStore(app_db, shared=True)
    conn = sqlite3.connect(app_db)
    try:
        with conn:
            for n in range(30):
                conn.execute("INSERT INTO orders (item) VALUES (?)", (f"o{n}",))
                store.enqueue(Send(f"o{n}"), connection=conn)
    finally:
        conn.close()
        store.close()
    url = f"sqlite:///{app_db}?shared=1"
    done = subprocess.run(
        [
            *LITEQ,
            "work",
            "--db",
            url,
            "--burst",
            "--processes",
            "2",
            "--import",
            "tests.jobs_shared",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"APP_DB": str(app_db), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with contextlib.closing(sqlite3.connect(app_db)) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        sent = sorted(r[0] for r in check.execute("SELECT item FROM sent"))
    assert sent == sorted(f"o{n}" for n in range(30))


def test_the_applications_user_version_stays_its_own(app_db: Path) -> None:
    with contextlib.closing(sqlite3.connect(app_db)) as conn:
        conn.execute("PRAGMA user_version = 3")  # (its own migrations' number)
    store = liteq.SQLiteStore(app_db, shared=True)
    store.enqueue(Send("a"))
    store.close()
    with contextlib.closing(sqlite3.connect(app_db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        conn.execute("PRAGMA user_version = 11")  # it migrates on
    store = liteq.SQLiteStore(app_db, shared=True)  # and liteq's queue is unmoved
    assert store.count() == 1
    store.close()
    # Opened without shared, the file says how to open it.
    with pytest.raises(StoreError, match=r"shared=True\) \(a URL: \?shared=1\)"):
        liteq.SQLiteStore(app_db)


def test_a_refused_enqueue_leaves_the_applications_connection_as_it_was(app_db: Path) -> None:
    store = liteq.SQLiteStore(app_db, shared=True)
    conn = sqlite3.connect(app_db)  # sqlite3's default mode, no transaction open
    conn.row_factory = lambda cursor, row: {
        d[0]: v for d, v in zip(cursor.description, row, strict=True)
    }
    conn.text_factory = bytes
    try:
        with pytest.raises(JobNotFound):
            store.enqueue(Send("x"), after=[12345], connection=conn)
        assert not conn.in_transaction  # (the transaction liteq began: rolled back)
        kept = store.enqueue(Send("y"), connection=conn)  # the app's factories left aside
        assert conn.in_transaction  # (begun as sqlite3 begins one before a write)
        conn.commit()
        found = store.get(kept.id, connection=conn).job
        assert isinstance(found, Send) and found.item == "y"
        assert conn.text_factory is bytes
        assert conn.execute("SELECT item FROM orders").fetchall() == [{"item": b"first"}]
        conn.close()
        with pytest.raises(StoreError, match="cannot be used"):
            store.enqueue(Send("z"), connection=conn)
    finally:
        conn.close()
        store.close()


def test_a_sqlalchemy_connection_joins_as_sqlite3s_does(app_db: Path) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    store = liteq.SQLiteStore(app_db, shared=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{app_db}")
    insert = sqlalchemy.text("INSERT INTO orders (item) VALUES (:item)")
    try:
        with engine.begin() as conn:
            store.enqueue(Send("first in the block"), connection=conn)
            conn.execute(insert, {"item": "kept"})
        with contextlib.suppress(ZeroDivisionError), engine.begin() as conn:
            conn.execute(insert, {"item": "lost"})
            store.enqueue(Send("lost"), connection=conn)
            1 / 0  # noqa: B018
        items = [job.job.item for job in store.jobs()]  # type: ignore[union-attr]
        assert items == ["first in the block"]
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT item FROM orders")).scalars().all()
        assert rows == ["first", "kept"]
    finally:
        engine.dispose()
        store.close()


@pytest.mark.timeout(120)
def test_producers_on_sqlite3_and_sqlalchemy_under_load_lose_nothing_and_never_lock(
    app_db: Path, tmp_path: Path
) -> None:
    """Three processes place orders (Python's sqlite3 twice, SQLAlchemy once), each order
    and its job in one transaction, one in three rolled back, while two workers run the
    jobs (each writing the application's table too): no "database is locked", every
    committed order's job ran, none of a rolled-back one."""
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{app_db}?shared=1"
    env = {**os.environ, "APP_DB": str(app_db)}
    work = subprocess.Popen(
        [*LITEQ, "work", "--db", url, "--processes", "2", "--import", "tests.jobs_shared", "-q"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCE, str(app_db), how, "150", label, str(tmp_path / label)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for how, label in (("sqlite3", "a"), ("sqlite3", "b"), ("sqlalchemy", "c"))
    ]
    try:
        errors = [p.communicate(timeout=90)[1] for p in producers]
        assert [p.returncode for p in producers] == [0, 0, 0], errors
        committed = [i for label in "abc" for i in json.loads((tmp_path / label).read_text())]
        assert len(committed) == 3 * 100
        wait_until(lambda: sent_count(app_db) >= 300, 60, "every job run")
    finally:
        work.terminate()
        said = work.communicate(timeout=60)[1]
    assert "locked" not in said and "Traceback" not in said, said[-2000:]
    with contextlib.closing(sqlite3.connect(app_db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        sent = [r[0] for r in conn.execute("SELECT item FROM sent")]
        orders = {r[0] for r in conn.execute("SELECT item FROM orders")}
    assert sorted(sent) == sorted(committed)  # each once: no worker died here
    assert orders == {"first", *committed}


PRODUCE = "import sys; from tests.jobs_shared import produce; produce(*sys.argv[1:])"


def sent_count(app_db: Path) -> int:
    """How many jobs have run (0 before the first makes its table)."""
    with contextlib.closing(sqlite3.connect(app_db, timeout=20)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM sent").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
