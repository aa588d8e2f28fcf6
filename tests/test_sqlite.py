"""SQLiteStore itself: the file, pragmas, schema, fork safety, and many processes at once."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import gc
import json
import os
import re
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

import liteq
from liteq import Status
from liteq.stores.sqlite.schema import SCHEMA_VERSION, schema_sql
from tests.helpers import wait_until
from tests.jobs import DefaultOptions, Noop, WithOptions

ROOT = Path(__file__).parents[1]


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.procs", *args], cwd=ROOT)


@contextlib.contextmanager
def write_held(path: Path, holder: str) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the file's write lock (procs.hold_write) until it is killed,
    at the latest when the block ends."""
    ready = path.parent / "ready"
    proc = child("hold_write", str(path), holder, str(ready))
    try:
        wait_until(ready.exists, what="the other process to hold the write lock")
        yield proc
    finally:
        proc.kill()  # its locks die with it
        proc.wait()


def timer_slack() -> int | None:
    """This thread's timer slack in ns (Linux), which waiting for the writer gate lowers
    for a while and must give back."""
    if sys.platform != "linux":
        return None
    return int(ctypes.CDLL(None).prctl(30, 0, 0, 0, 0))  # PR_GET_TIMERSLACK


def test_file_is_private_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    store.enqueue(Noop())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{path}-lock").stat().st_mode) == 0o600
    conn = apsw.Connection(str(path))
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_when_the_next_job_is_due_is_read_in_one_snapshot(tmp_path: Path) -> None:
    # next_run_at seeks the top priority of queued jobs, then that priority's first run_at:
    # read apart, another process's claim between the two left a NULL (TypeError), which
    # ended a `liteq work --burst` supervisor.
    db = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(db)
    later = store.enqueue(Noop(), delay=3600)
    ready = tmp_path / "ready"
    churn = child("churn_one", str(db), "5", str(ready))
    try:
        wait_until(ready.exists, what="the other process to churn")
        calls, deadline = 0, time.monotonic() + 6
        while calls < 20_000 and time.monotonic() < deadline:
            due = store.next_run_at()
            assert due is not None and due <= later.run_at.timestamp() + 0.001
            calls += 1
        assert churn.poll() is None, "the churning process ended early"
    finally:
        churn.kill()
        churn.wait()


def test_a_new_file_gets_small_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite"
    liteq.SQLiteStore(new).enqueue(Noop(1))
    assert apsw.Connection(str(new)).execute("PRAGMA page_size").fetchone() == (1024,)
    # A file made before liteq opened it, here by Python's sqlite3 with SQLite's 4 KiB pages
    # (files of older liteq versions have them too: see the migration tests).
    old = tmp_path / "old.sqlite"
    made = sqlite3.connect(old)
    made.execute("PRAGMA page_size = 4096")
    made.execute("PRAGMA journal_mode = wal")
    made.close()
    store = liteq.SQLiteStore(old)
    ids = [store.enqueue(Noop(n)).id for n in range(300)]  # more than one page of rows
    assert child("work", str(old)).wait(60) == 0
    assert store.count() == 0 and len(set(ids)) == 300
    raw = apsw.Connection(str(old))
    assert raw.execute("PRAGMA page_size").fetchone() == (4096,)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_page_size_chooses_a_new_files_pages_and_an_existing_file_keeps_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    big = tmp_path / "big.sqlite"
    store = liteq.SQLiteStore(big, page_size=4096)
    store.enqueue(Noop(1))
    assert liteq.connect(f"sqlite:///{big}?page_size=4096").count() == 1  # no warning
    assert apsw.Connection(str(big)).execute("PRAGMA page_size").fetchone() == (4096,)
    assert not caplog.records
    # Asked for other pages than the file has: the file keeps them, works, and liteq says so.
    again = liteq.SQLiteStore(big, page_size=1024)
    again.enqueue(Noop(2))
    assert [m.job.n for m in again.jobs()] == [1, 2]  # type: ignore[union-attr]
    assert apsw.Connection(str(big)).execute("PRAGMA page_size").fetchone() == (4096,)
    assert "keeps its 4096-byte pages: page_size=1024 applies to a new file only" in caplog.text
    for bad in (1000, 256, 131072, 4096.0, True, "4096"):
        with pytest.raises(ValueError, match="power of two from 512 to 65536"):
            liteq.SQLiteStore(tmp_path / "bad.sqlite", page_size=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.sqlite").exists()


@pytest.mark.parametrize(
    ("shared", "page_size", "pages"), [(False, None, 4096), (True, None, 4096), (False, 4096, 1024)]
)
def test_every_connection_checkpoints_after_4_mb_of_log(
    tmp_path: Path, shared: bool, page_size: int | None, pages: int
) -> None:
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path, shared=shared, page_size=page_size)
    store.enqueue(Noop(1))
    assert store._db().execute("PRAGMA wal_autocheckpoint").fetchone() == (pages,)
    # A second connection to the file, as a worker's, and one opened again after close().
    other = liteq.SQLiteStore(path, shared=shared)
    assert other.count() == 1
    assert other._db().execute("PRAGMA wal_autocheckpoint").fetchone() == (pages,)
    store.close()
    store.enqueue(Noop(2))
    assert store._db().execute("PRAGMA wal_autocheckpoint").fetchone() == (pages,)
    # (The setting is a connection's, not the file's: SQLite's own connection has 1,000.)
    assert apsw.Connection(str(path)).execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("full", 2)])
def test_durability_sets_synchronous(tmp_path: Path, durability: str, level: int) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite", durability=durability)  # type: ignore[arg-type]
    assert store._db().execute("PRAGMA synchronous").fetchone() == (level,)
    with pytest.raises(ValueError, match="durability"):
        liteq.SQLiteStore(tmp_path / "q.sqlite", durability="fast")  # type: ignore[arg-type]


def test_schema_comes_from_schema_sql() -> None:
    assert schema_sql() == (ROOT / "schema.sql").read_text()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    liteq.SQLiteStore(path).close()
    apsw.Connection(str(path)).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(liteq.StoreError, match="newer than this liteq"):
        liteq.SQLiteStore(path)


def test_files_that_are_not_liteq_queues(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(liteq.StoreError, match="is not an SQLite file, so not a liteq queue"):
        liteq.SQLiteStore(garbage)
    other = tmp_path / "other.sqlite"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(liteq.StoreError, match="another application's database"):
        liteq.SQLiteStore(other)
    with pytest.raises(liteq.StoreError, match="missing does not exist"):
        liteq.SQLiteStore(tmp_path / "missing" / "q.sqlite")
    (tmp_path / "plain").write_text("")
    with pytest.raises(liteq.StoreError, match="plain is not a directory"):
        liteq.SQLiteStore(tmp_path / "plain" / "q.sqlite")
    with pytest.raises(liteq.StoreError, match="is a directory, not a queue file"):
        liteq.SQLiteStore(tmp_path)
    with pytest.raises(ValueError, match="MemoryStore"):
        liteq.SQLiteStore(":memory:")


def test_a_transaction_given_up_halfway_leaves_the_store_usable(tmp_path: Path) -> None:
    # Write transactions share one cursor per connection: one abandoned with its write made
    # and a read left half done must roll back whole and not hold up the next.
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    store.enqueue_many([Noop(i) for i in range(3)])

    def give_up_halfway() -> None:
        with store._transaction() as tx:
            tx.insert(store.get(1)._record)  # type: ignore[union-attr]
            rows = tx._cursor.execute("SELECT id FROM liteq_jobs")  # type: ignore[attr-defined]
            next(rows)
            raise RuntimeError("given up halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        give_up_halfway()
    assert store.count() == 3
    assert store.enqueue(Noop(3)).id == 4
    claimed = store.claim("w")
    assert claimed is not None and claimed.id == 1
    store.complete(claimed)
    assert store.count() == 3


def test_an_enqueue_never_joins_a_transaction_left_open(tmp_path: Path) -> None:
    # An enqueue without a coalesce id is one INSERT in autocommit mode. Were a transaction
    # ever left open on the connection (a ROLLBACK that failed, say), that INSERT would join
    # it and be lost with it: it must refuse instead.
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    store.enqueue(Noop(1))
    conn = store._db()
    conn.execute("BEGIN")
    with pytest.raises(apsw.SQLError, match="within a transaction"):
        store.enqueue(Noop(2))
    conn.execute("ROLLBACK")
    assert [m.job.n for m in store.jobs()] == [1]  # type: ignore[union-attr]
    store.enqueue(Noop(3))
    assert [m.job.n for m in store.jobs()] == [1, 3]  # type: ignore[union-attr]


@pytest.mark.parametrize("holder", ["liteq", "sqlite"])
def test_a_write_waits_out_a_held_lock_and_says_when_it_stayed_held(
    tmp_path: Path, holder: str
) -> None:
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path, busy_timeout=0.5)
    store.enqueue(Noop(1))
    slack = timer_slack()
    with write_held(path, holder):
        started = time.monotonic()
        with pytest.raises(liteq.StoreError, match=r"stayed locked by another process for more"):
            store.enqueue(Noop(2))
        assert time.monotonic() - started >= 0.4  # it waited, then gave up
        assert timer_slack() == slack
        assert [m.job.n for m in store.jobs()] == [1]  # type: ignore[union-attr]
    store.enqueue(Noop(3))
    assert [m.job.n for m in store.jobs()] == [1, 3]  # type: ignore[union-attr]


def test_without_its_lock_file_the_store_still_writes_safely(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.sqlite"
    Path(f"{path}-lock").mkdir()  # cannot be opened as the writer gate
    with caplog.at_level("INFO", logger="liteq.store"):
        store = liteq.SQLiteStore(path, busy_timeout=0.5)
    assert "without a writer gate" in caplog.text
    store.enqueue(Noop(1))
    with (
        write_held(path, "liteq"),
        pytest.raises(liteq.StoreError, match=r"stayed locked by another process"),
    ):
        store.enqueue(Noop(2))  # SQLite's busy timeout alone makes it wait, then say so
    store.enqueue(Noop(3))
    assert [m.job.n for m in store.jobs()] == [1, 3]  # type: ignore[union-attr]


def test_stores_dropped_without_close_leave_no_descriptor_open(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    liteq.SQLiteStore(path).enqueue(Noop(1))
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for n in range(30):  # say, a store opened per web request and never closed
        liteq.SQLiteStore(path).enqueue(Noop(n))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
    assert liteq.SQLiteStore(path).count() == 31


def test_a_waiting_write_goes_ahead_when_the_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    with write_held(path, "liteq") as proc:
        killer = threading.Timer(0.3, proc.kill)
        killer.start()
        started = time.monotonic()
        slack = timer_slack()
        store.enqueue(Noop(1))  # waits on the holder, then goes ahead once it is killed
        killer.join()
    assert time.monotonic() - started >= 0.2
    assert timer_slack() == slack
    assert [m.job.n for m in store.jobs()] == [1]  # type: ignore[union-attr]


def test_connect_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = liteq.connect("sqlite:///rel.sqlite")
    assert isinstance(relative, liteq.SQLiteStore) and relative.path == "rel.sqlite"
    absolute = liteq.connect(f"sqlite:///{tmp_path}/abs.sqlite?durability=full")
    assert isinstance(absolute, liteq.SQLiteStore)
    assert absolute.path == f"{tmp_path}/abs.sqlite" and absolute.durability == "full"
    both = liteq.connect("sqlite:///both.sqlite?durability=full&page_size=2048")
    assert isinstance(both, liteq.SQLiteStore)
    assert (both.durability, both.page_size) == ("full", 2048)
    assert both._db().execute("PRAGMA page_size").fetchone() == (2048,)
    assert isinstance(liteq.connect("memory://"), liteq.MemoryStore)
    for bad, words in [
        ("sqlite://host/x", "three or four slashes"),
        ("redis://x", "unsupported"),
        ("sqlite:///x.sqlite?fast=1", "unknown option"),
        ("sqlite:///x.sqlite?page_size=4k", "page_size must be a number of bytes"),
        ("sqlite:///x.sqlite?page_size=1000", "power of two"),
        ("postgresql://x/db?schema=not-a-name", "schema must be a plain name"),
    ]:
        with pytest.raises(ValueError, match=words):
            liteq.connect(bad)


def test_coalescing_is_exact_across_processes(tmp_path: Path) -> None:
    db = str(tmp_path / "q.sqlite")
    liteq.SQLiteStore(db).close()
    keys = ",".join(f"k{i}" for i in range(40))
    start_at = str(time.time() + 1.0)
    procs = [child("enqueue_coalesced", db, start_at, keys) for _ in range(6)]
    assert [p.wait(60) for p in procs] == [0] * 6
    store = liteq.SQLiteStore(db)
    assert store.count() == 40
    assert sorted(m.coalesce_id or "" for m in store.jobs()) == sorted(keys.split(","))


def test_many_worker_processes_run_each_job_once_without_lock_errors(tmp_path: Path) -> None:
    db, log = str(tmp_path / "q.sqlite"), str(tmp_path / "runs.log")
    liteq.SQLiteStore(db).close()
    producers = [child("enqueue_logs", db, log, "150") for _ in range(2)]
    assert [p.wait(60) for p in producers] == [0, 0]
    workers = [child("work", db) for _ in range(4)]
    assert [w.wait(120) for w in workers] == [0] * 4
    runs = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert len(runs) == 300 and len({r["id"] for r in runs}) == 300
    assert len({r["pid"] for r in runs}) > 1
    assert liteq.SQLiteStore(db).count() == 0


def test_a_version_1_file_is_migrated_with_its_jobs_and_id_history(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v1.sql").read_text()):
        pass
    now = time.time()
    for n, coalesce in ((1, None), (2, "nightly"), (3, None)):
        conn.execute(
            "INSERT INTO liteq_jobs (job_type, payload, queue, priority, status, attempts,"
            " max_attempts, run_at, created_at, coalesce_id, delete_on_complete)"
            " VALUES (?, ?, 'default', 0, 'queued', 0, 1, ?, ?, ?, 1)",
            (
                "tests.jobs.Noop",
                json.dumps({"type": "tests.jobs.Noop", "state": {"n": n}}),
                now,
                now,
                coalesce,
            ),
        )
    conn.execute("DELETE FROM liteq_jobs WHERE id = 3")  # AUTOINCREMENT remembers 3
    conn.close()

    store = liteq.SQLiteStore(path)
    db = store._db()
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [m.job.n for m in store.jobs()] == [1, 2]  # type: ignore[union-attr]
    assert store.enqueue(Noop(9), coalesce_id="nightly").id == 2  # still coalesced
    assert store.enqueue(Noop(4)).id == 4  # never 3 again
    schema = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"liteq_jobs_claim", "liteq_jobs_coalesce", "liteq_jobs_deleted"} <= schema
    assert "liteq_jobs_claim_by_queue" not in schema
    claimed = store.claim_many("owner", limit=10)
    assert [m.job.n for m in claimed] == [1, 2, 4]  # type: ignore[union-attr]
    store.complete_many(claimed)
    assert store.enqueue(Noop(5)).id == 5  # the high water survives an empty queue


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_an_older_file_is_migrated_with_its_jobs_claims_and_id_history(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / f"v{version}.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / f"schema_v{version}.sql").read_text()):
        pass
    # Jobs as that version wrote them: one running (claimed, leased), one queued with a
    # coalesce id, one deleted while it held the largest id.
    now = time.time()
    insert = (
        "INSERT INTO liteq_jobs (id, job_type, payload, queue, priority, status, attempts, "
        "max_attempts, run_at, created_at, coalesce_id, delete_on_complete, owner, "
        "lease_until, started_at) VALUES (?, 'tests.jobs.Noop', ?, 'default', 0, ?, ?, 1, "
        "?, ?, ?, 1, ?, ?, ?)"
    )
    for n, status, coalesce, owner in (
        (1, "running", None, "worker-a"),
        (2, "queued", "nightly", None),
        (3, "queued", None, None),
    ):
        payload = json.dumps({"type": "tests.jobs.Noop", "state": {"n": n}})
        lease = now + 60 if owner else None
        attempts = int(owner is not None)
        conn.execute(
            insert, (n, payload, status, attempts, now, now, coalesce, owner, lease, lease)
        )
    conn.execute("DELETE FROM liteq_jobs WHERE id = 3")
    conn.close()

    store = liteq.SQLiteStore(path)
    db = store._db()
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    running = store.get(1)
    assert (running.status, running.owner, running.attempts) == (Status.RUNNING, "worker-a", 1)
    assert store.enqueue(Noop(9), coalesce_id="nightly").id == 2  # still coalesced
    assert store.enqueue(Noop(4)).id == 4  # never 3 again
    with pytest.raises(apsw.ConstraintError):  # the status check still holds
        db.execute("UPDATE liteq_jobs SET status = 'lost' WHERE id = 1")
    schema = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"liteq_jobs_claim", "liteq_jobs_coalesce", "liteq_jobs_active"} <= schema
    assert "liteq_jobs_deleted" in schema and "liteq_jobs_v3" not in schema
    # A job claimed before the migration is rescued by its lease, as it was then.
    later = liteq.SQLiteStore(path, clock=lambda: now + 61)
    assert [m.id for m in later.detect_hung_jobs()] == [1]


def test_a_version_7_file_gets_its_workers_jobs_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "v7.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v7.sql").read_text()):
        pass
    now = time.time()
    conn.execute(
        "INSERT INTO liteq_workers (owner, host, pid, queues, started_at, beat_at, lease, "
        "jobs_done, current_job, rss) VALUES ('w', 'elsewhere', 7, NULL, ?, ?, 600, 4, 9, ?)",
        (now, now, 1 << 20),
    )
    conn.close()
    store = liteq.SQLiteStore(path)
    db = store._db()
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (old,) = store.workers()
    assert (old.owner, old.jobs_done, old.current_job, old.in_flight) == ("w", 4, 9, 0)
    store.beat("w", jobs_done=5, current_job=None, finished={}, in_flight=3)
    assert [w.in_flight for w in store.workers()] == [3]
    # The same table as a new file's (schema.sql), column for column.
    fresh = liteq.SQLiteStore(tmp_path / "fresh.sqlite")
    info = "PRAGMA table_info(liteq_workers)"
    assert list(db.execute(info)) == list(fresh._db().execute(info))
    fresh.close()


def test_a_version_8_file_gets_its_schedules_table(tmp_path: Path) -> None:
    from liteq.stores.contract import ScheduleInfo

    path = tmp_path / "v8.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v8.sql").read_text()):
        pass
    conn.close()
    store = liteq.SQLiteStore(path)
    db = store._db()
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    info = ScheduleInfo("nightly", "0 3 * * *", "UTC", "default", 100, None, 1.0)
    with store._transaction() as tx:
        tx.declare_schedule(info)
        assert tx.advance_schedule(dataclasses.replace(info, last_slot=200))
        assert not tx.advance_schedule(dataclasses.replace(info, last_slot=200))
    assert [(s.name, s.last_slot) for s in store.schedules()] == [("nightly", 200)]
    # The same table as a new file's (schema.sql), column for column.
    fresh = liteq.SQLiteStore(tmp_path / "fresh.sqlite")
    table = "PRAGMA table_info(liteq_schedules)"
    assert list(db.execute(table)) == list(fresh._db().execute(table))
    fresh.close()


def test_the_hot_statements_seek_their_indexes_and_build_no_temporary_tables(
    tmp_path: Path,
) -> None:
    from liteq.stores.sqlite import queries as sqlite

    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    db = store._db()

    def plan(sql: str, args: tuple[object, ...]) -> str:
        return " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))

    claim = plan(sqlite.pick(1, 1), (1.0, "default"))
    assert "USING INDEX liteq_jobs_claim (queue=?)" in claim
    holder = plan(sqlite.COALESCE_HOLDER, ("x",))
    assert "USING INDEX liteq_jobs_coalesce (coalesce_id=?)" in holder
    active = plan(sqlite.ACTIVE, ())
    assert "USING INDEX liteq_jobs_active (status=?)" in active
    # An IN list of more than two values makes SQLite build a b-tree per execution
    # (schema.sql): an enqueue and a completion must not.
    for sql in (sqlite.INSERT_OR_NOTHING, sqlite.INSERT, sqlite.DELETE_FENCED):
        numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
        params = max(numbered) if numbered else sql.count("?")
        ops = [row[1] for row in db.execute(f"EXPLAIN {sql}", [None] * params)]
        assert "OpenEphemeral" not in ops, sql
    # An enqueue without a coalesce id is that INSERT alone, in autocommit mode. It must
    # take the write lock before it reads anything, as BEGIN IMMEDIATE would: SQLite's
    # program starts (where Init jumps) with a write Transaction on the main database.
    plain = sqlite.INSERT
    program = list(db.execute(f"EXPLAIN {plain}", [None] * plain.count("?")))
    assert program[0][1] == "Init"
    first = program[program[0][3]]
    assert (first[1], first[2], first[3]) == ("Transaction", 0, 1)


def test_an_older_schema_is_migrated_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liteq.stores.sqlite import schema as sqlite

    path = tmp_path / "q.sqlite"
    old = liteq.SQLiteStore(path)
    kept = old.enqueue(Noop(5))
    old.close()
    # A future release adds a column. Opening a file of this version must migrate it.
    monkeypatch.setattr(sqlite, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(
        sqlite.MIGRATIONS, SCHEMA_VERSION, "ALTER TABLE liteq_jobs ADD COLUMN tags TEXT"
    )
    store = liteq.SQLiteStore(path)
    conn = store._db()
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    assert "tags" in [row[1] for row in conn.execute("PRAGMA table_info(liteq_jobs)")]
    assert store.get(kept.id).job.n == 5  # type: ignore[union-attr]


@pytest.mark.parametrize("payloads", ["array", "json"])
def test_a_batch_stores_each_job_exactly_as_one_enqueue_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payloads: str
) -> None:
    from liteq.stores.sqlite import transaction
    from tests.helpers import encode

    if payloads == "json":  # as without carray in apsw, or on Python's sqlite3 (shared)
        monkeypatch.setattr(transaction, "_ARRAY", None)
    else:
        assert transaction._ARRAY is not None, "this apsw has no carray"
    store = liteq.SQLiteStore(tmp_path / "q.sqlite", clock=lambda: 1000.0)
    tricky = ["é ☃ \U0001f600", 'quote " back \\ slash', "line\nbreak\ttab\x00nul", "", "[1, 2]"]
    floats = [0.1, 1e300, -0.0, 2**70, -(2**63)]
    jobs = [Noop(v) for v in [*tricky, *floats, {"nested": [None, True, {"k": 1.5}]}]]
    jobs += [WithOptions(), Noop(7)]  # options of its own: rows differ, the plain path
    jobs += [DefaultOptions(), Noop(8)]  # options of its own that agree: one statement
    same = store.enqueue_many(jobs[:-4], priority=3, delay=60, max_runtime=5)
    mixed = store.enqueue_many(jobs[-4:-2])
    agree = store.enqueue_many(jobs[-2:])
    rows = (
        store._db()
        .execute("SELECT id, job_type, payload, priority, max_runtime FROM liteq_jobs ORDER BY id")
        .fetchall()
    )
    assert [r[0] for r in rows] == [m.id for m in [*same, *mixed, *agree]]
    for job, (_, job_type, payload, *_rest) in zip(jobs, rows, strict=True):
        assert (job_type, payload) == encode(job)
    assert {(r[3], r[4]) for r in rows[: len(same)]} == {(3, 5.0)}
    assert [store.get(m.id).job.n for m in same[:5]] == [j.n for j in jobs[:5]]  # type: ignore[union-attr, attr-defined]
    # Every column as one enqueue at a time stores it.
    one = liteq.SQLiteStore(tmp_path / "one.sqlite", clock=lambda: 1000.0)
    for job in jobs[:-4]:
        one.enqueue(job, priority=3, delay=60, max_runtime=5)
    for job in jobs[-4:]:
        one.enqueue(job)
    every = "SELECT * FROM liteq_jobs ORDER BY id"
    assert store._db().execute(every).fetchall() == one._db().execute(every).fetchall()


# -- a path that comes to name another file while processes hold the old one ------------------
# (Each store holds its file's byte of `<path>-lock` through a descriptor of its own, so two
# stores of one process see each other as two processes would; tests/test_faults.py has the
# same with real processes.)
def test_a_file_moved_over_one_a_store_holds_is_refused_until_it_lets_go(tmp_path: Path) -> None:
    path, other = tmp_path / "q.sqlite", tmp_path / "other.sqlite"
    kept = liteq.SQLiteStore(other)
    kept.enqueue(Noop(7))
    kept.close()
    old = liteq.SQLiteStore(path)
    old.enqueue(Noop(1))
    os.replace(other, path)
    replaced = "replaced while processes still have the old file open: stop them first"
    with pytest.raises(liteq.StoreMoved, match=replaced):
        liteq.SQLiteStore(path)
    with pytest.raises(liteq.StoreMoved, match=replaced):
        liteq.SQLiteStore(path, readonly=True)
    with pytest.raises(liteq.StoreMoved, match="deleted or replaced"):
        old.enqueue(Noop(2))  # it lets go of the old file, its log emptied into that file
    assert os.path.getsize(f"{path}-wal") == 0
    new = liteq.SQLiteStore(path)
    assert [m.job.n for m in new.jobs()] == [7]  # type: ignore[union-attr]
    new.enqueue(Noop(8))
    assert [m.job.n for m in new.jobs()] == [7, 8]  # type: ignore[union-attr]
    with pytest.raises(liteq.StoreMoved):  # the old store never opens the path again
        old.enqueue(Noop(3))
    new.close()
    reader = liteq.SQLiteStore(path, readonly=True)
    assert [m.job.n for m in reader.jobs()] == [7, 8]  # type: ignore[union-attr]
    reader.close()


def test_no_new_file_is_made_where_a_held_one_was_deleted(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    old = liteq.SQLiteStore(path)
    old.enqueue(Noop(1))
    os.remove(path)
    with pytest.raises(liteq.StoreMoved, match="deleted while processes still have the old"):
        liteq.SQLiteStore(path)
    assert not path.exists()
    old.close()  # (it notices, and lets go without checkpointing anywhere)
    fresh = liteq.SQLiteStore(path)
    assert list(fresh.jobs()) == []


def test_a_log_left_with_another_files_commits_is_refused(tmp_path: Path) -> None:
    path, other = tmp_path / "q.sqlite", tmp_path / "other.sqlite"
    kept = liteq.SQLiteStore(other)
    kept.enqueue(Noop(7))
    kept.close()
    # A process of the old file killed with commits in its log: a connection never closed
    # stands for it (it keeps its lock on the log's index, but liteq's hold is let go).
    old = liteq.SQLiteStore(path)
    old.enqueue(Noop(1))
    conn = old._db()
    old.file.holding.release()
    assert os.path.getsize(f"{path}-wal") > 0
    os.replace(other, path)
    with pytest.raises(liteq.StoreMoved, match=r"q\.sqlite-wal, still holds commits of the old"):
        liteq.SQLiteStore(path)
    assert conn.execute("SELECT count(*) FROM liteq_jobs").fetchone() == (1,)


def test_the_same_file_under_two_stores_and_a_fresh_file_after_a_clean_stop(
    tmp_path: Path,
) -> None:
    path, other = tmp_path / "q.sqlite", tmp_path / "other.sqlite"
    one, two = liteq.SQLiteStore(path), liteq.SQLiteStore(path)
    one.enqueue(Noop(1))
    two.enqueue(Noop(2))
    one.close()
    two.close()
    kept = liteq.SQLiteStore(other)
    kept.enqueue(Noop(7))
    kept.close()
    os.replace(other, path)  # every process stopped first: the file is used as it is
    assert [m.job.n for m in liteq.SQLiteStore(path).jobs()] == [7]  # type: ignore[union-attr]


# -- `<path>-lock` where liteq refuses, or only reads ----------------------------------------------
#: A process that opens `db` (to read, or as a producer), prints what came of it, then, if
#: told a file to wait for, keeps the store open until that file exists.
OPENER = """
import json, pathlib, sys, time, liteq
db, how, wait = sys.argv[1:4]
try:
    store = liteq.SQLiteStore(db, readonly=how == "reads")
    said = {"jobs": len(list(store.jobs()))}
except liteq.StoreError as exc:
    store, said = None, {"kind": type(exc).__name__, "error": str(exc)}
print(json.dumps(said), flush=True)
if store is not None and wait:
    while not pathlib.Path(wait).exists():
        time.sleep(0.01)
if store is not None:
    store.close()
"""


def start_opener(db: Path, how: str, wait: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", OPENER, str(db), how, str(wait or "")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def open_in_process(db: Path, how: str) -> dict[str, object]:
    """Open `db` in a process of its own, which closes it again; what came of it."""
    proc = start_opener(db, how)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    said: dict[str, object] = json.loads(out)
    return said


def said_first(proc: subprocess.Popen[str]) -> dict[str, object]:
    """What a process that keeps its store open said about opening it."""
    assert proc.stdout is not None
    said: dict[str, object] = json.loads(proc.stdout.readline())
    return said


def a_queue(path: Path, *jobs: int) -> None:
    """A queue file that no process has open, and nothing beside it (as a backup restored)."""
    store = liteq.SQLiteStore(path)
    for n in jobs:
        store.enqueue(Noop(n))
    store.close()
    os.remove(f"{path}-lock")


def lock_byte_held(path: Path) -> bool:
    """Whether a process holds a byte of `<path>-lock` standing for a file (holding.py)."""
    fd = os.open(f"{path}-lock", os.O_RDONLY)
    try:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 1, 0, 0)
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query)
        kind: int = struct.unpack("hhqqi4x", got)[0]
        return kind != fcntl.F_UNLCK
    finally:
        os.close(fd)


def refused_file(directory: Path, what: str) -> Path:
    path = directory / "q.sqlite"
    if what == "empty":
        path.touch()
    elif what == "text":
        path.write_text("not a database" * 100)
    elif what.startswith("another application's"):
        conn = sqlite3.connect(path)
        if what.endswith("in WAL mode"):
            conn.execute("PRAGMA journal_mode = wal")
        conn.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username TEXT)")
        conn.commit()
        conn.close()
    elif what.startswith("newer"):
        a_queue(path, 1)
        if what.endswith("with its -lock"):  # (a real queue's: it stays as it is)
            Path(f"{path}-lock").write_bytes(b"liteqlog" + bytes(16))
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    elif what == "damaged":
        a_queue(path, 1)
        with path.open("r+b") as file:  # the schema's page, past the file's header
            file.seek(100)
            file.write(b"\xff" * 900)
    return path


REFUSED = [
    ("missing", "reads", "no queue at"),
    ("empty", "reads", "no queue at"),
    ("text", "reads", "is not an SQLite file, so not a liteq queue"),
    ("text", "writes", "is not an SQLite file, so not a liteq queue"),
    ("another application's database", "reads", "another application's database"),
    ("another application's database", "writes", "another application's database"),
    ("another application's database in WAL mode", "reads", "another application's database"),
    ("another application's database in WAL mode", "writes", "another application's"),
    ("newer schema", "reads", "newer than this liteq"),
    ("newer schema", "writes", "newer than this liteq"),
    ("newer schema with its -lock", "reads", "newer than this liteq"),
    ("newer schema with its -lock", "writes", "newer than this liteq"),
    ("damaged", "reads", "not a usable SQLite database"),
    ("damaged", "writes", "not a usable SQLite database"),
]


@pytest.mark.parametrize(("what", "how", "words"), REFUSED, ids=[" ".join(c[:2]) for c in REFUSED])
def test_a_refused_open_leaves_no_file_behind(
    tmp_path: Path, what: str, how: str, words: str
) -> None:
    path = refused_file(tmp_path, what)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    said = open_in_process(path, how)
    assert words in str(said.get("error")), said
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_read_only_open_leaves_no_lock_file_it_made(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    a_queue(path, 1, 2)
    assert open_in_process(path, "reads") == {"jobs": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.sqlite"]


def test_the_log_is_held_before_anything_is_read_through_it(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    a_queue(path, 1)  # (no `-lock`: the opener makes it)
    # A connection that keeps the file locked: a reader waits (its busy timeout) to read.
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA locking_mode = EXCLUSIVE").fetchall()
    conn.execute("BEGIN IMMEDIATE; SELECT count(*) FROM liteq_jobs").fetchall()
    reader = start_opener(path, "reads")
    try:
        wait_until(lambda: os.path.exists(f"{path}-lock") and lock_byte_held(path), 5, "a hold")
        assert reader.poll() is None  # (still waiting to read)
    finally:
        conn.execute("COMMIT")
        conn.close()
        out, _ = reader.communicate(timeout=30)
    assert json.loads(out) == {"jobs": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.sqlite"]


def test_a_lock_file_a_live_process_holds_is_never_removed_by_another_ones_open(
    tmp_path: Path,
) -> None:
    path, other, old = tmp_path / "q.sqlite", tmp_path / "other.sqlite", tmp_path / "old.sqlite"
    a_queue(path, 1)
    a_queue(other, 7)
    lock = Path(f"{path}-lock")
    closed, done = tmp_path / "closed", tmp_path / "done"
    # A reader makes `q.sqlite-lock`; a second reader opens it too; the first lets go.
    maker = start_opener(path, "reads", closed)
    try:
        assert said_first(maker) == {"jobs": 1}
        made = lock.stat().st_ino
        holder = start_opener(path, "reads", done)
        try:
            assert said_first(holder) == {"jobs": 1}
            closed.touch()
            maker.communicate(timeout=30)
            assert lock.stat().st_ino == made and lock_byte_held(path)
            # Refused opens: a text file at the path, then another queue (the reader still
            # holds the log for the old file), to read and to write.
            os.link(path, old)
            os.remove(path)
            refused_file(tmp_path, "text")
            for how in ("reads", "writes"):
                said = open_in_process(path, how)
                assert said.get("kind") == "StoreMoved", said
            os.replace(other, path)
            for how in ("reads", "writes"):
                said = open_in_process(path, how)
                assert said.get("kind") == "StoreMoved", said
            assert lock.stat().st_ino == made and lock_byte_held(path)
        finally:
            done.touch()
            holder.communicate(timeout=30)
    finally:
        closed.touch()
        if maker.poll() is None:
            maker.communicate(timeout=30)
    assert open_in_process(path, "writes") == {"jobs": 1}  # the file at the path, as it is
    assert [m.job.n for m in liteq.SQLiteStore(path).jobs()] == [7]  # type: ignore[union-attr]


@contextlib.contextmanager
def read_only_directory(directory: Path) -> Iterator[None]:
    """No file can be made or removed in `directory` (root ignores permissions: immutable)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


@pytest.mark.parametrize("lock_file", ["there", "missing"])
def test_a_queue_in_a_read_only_directory_can_still_be_read(tmp_path: Path, lock_file: str) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "q.sqlite"
    a_queue(path, 1, 2)
    # SQLite needs `-wal` and `-shm` to read: another process has the queue open (with
    # `-lock` made, the reader checks the log is this file's; without, it cannot, and reads).
    if lock_file == "there":
        Path(f"{path}-lock").touch()
    holder = apsw.Connection(str(path))
    holder.execute("SELECT count(*) FROM liteq_jobs").fetchall()
    before = sorted(p.name for p in directory.iterdir())
    with read_only_directory(directory):
        assert open_in_process(path, "reads") == {"jobs": 2}
    assert sorted(p.name for p in directory.iterdir()) == before
    holder.close()


#: A process that opens `db` again and again until `stop` exists (refused, or reading), and
#: checks each time that its hold is seen at the path: on the `-lock` there, not on one that
#: another opener removed.
CHURN = """
import fcntl, os, pathlib, struct, sys, liteq
db, stop, ready = sys.argv[1:4]
query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 1, 0, 0)
opened = 0
pathlib.Path(ready, str(os.getpid())).touch()
while not pathlib.Path(stop).exists():
    try:
        store = liteq.SQLiteStore(db, readonly=True)
    except liteq.StoreError:
        continue
    opened += 1
    fd = os.open(db + "-lock", os.O_RDONLY)  # (another description: it sees our lock)
    got = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))[0]
    os.close(fd)
    store.close()
    if got == fcntl.F_UNLCK:
        sys.exit("held a removed -lock")
print(opened)
"""


def test_openers_racing_to_make_and_remove_the_lock_file_never_hold_a_removed_one(
    tmp_path: Path,
) -> None:
    # Readers of a queue with no `-lock`, and of an empty file (refused: no queue): each
    # makes `-lock` or opens the one there, and removes it when it lets go if no other holds it.
    for what in ("queue", "empty"):
        directory = tmp_path / what
        directory.mkdir()
        path, stop = directory / "q.sqlite", directory / "stop"
        if what == "queue":
            a_queue(path, 1)
        else:
            path.touch()
        ready = tmp_path / f"{what}-ready"
        ready.mkdir()
        readers = [
            subprocess.Popen(
                [sys.executable, "-c", CHURN, str(path), str(stop), str(ready)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        try:
            # Churn for 2 s once all have imported liteq (a loaded machine takes seconds).
            deadline = time.monotonic() + 60
            while len(list(ready.iterdir())) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2)
        finally:
            stop.touch()
            said = [reader.communicate(timeout=30) for reader in readers]
        assert [reader.returncode for reader in readers] == [0] * 6, said
        if what == "queue":
            assert sum(int(out) for out, _ in said) > 20, said
        assert sorted(p.name for p in directory.iterdir()) == ["q.sqlite", "stop"]


def test_refused_and_reading_opens_racing_a_new_queue_never_take_its_lock_file_away(
    tmp_path: Path,
) -> None:
    # Readers open an empty file again and again (refused: no queue yet; then reading the
    # queue), each making `-lock` and removing it, while a producer makes the queue there.
    churn = """
import pathlib, sys, liteq
db, stop = sys.argv[1:3]
while not pathlib.Path(stop).exists():
    try:
        liteq.SQLiteStore(db, readonly=True).close()
    except liteq.StoreError:
        pass
"""
    for round in range(2):
        directory = tmp_path / str(round)
        directory.mkdir()
        path, stop, done = directory / "q.sqlite", directory / "stop", directory / "done"
        path.touch()
        readers = [
            subprocess.Popen([sys.executable, "-c", churn, str(path), str(stop)], cwd=ROOT)
            for _ in range(4)
        ]
        try:
            time.sleep(0.3)
            producer = start_opener(path, "writes", done)
            try:
                assert said_first(producer) == {"jobs": 0}
                time.sleep(0.3)
                stop.touch()
                for reader in readers:
                    assert reader.wait(timeout=30) == 0
                # The producer's hold is on the `-lock` at the path, which says its file.
                record = Path(f"{path}-lock").read_bytes()[:24]
                st = path.stat()
                assert record == struct.pack("<8sQQ", b"liteqlog", st.st_dev, st.st_ino)
                assert lock_byte_held(path)
            finally:
                done.touch()
                producer.communicate(timeout=30)
        finally:
            stop.touch()
            for reader in readers:
                reader.kill()
                reader.wait()


def test_a_version_9_file_gets_results_and_dependencies(tmp_path: Path) -> None:
    path = tmp_path / "v9.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v9.sql").read_text()):
        pass
    conn.close()
    store = liteq.SQLiteStore(path)
    db = store._db()
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    first = store.enqueue(Noop(1), keep_result=True)
    then = store.enqueue(Noop(2), after=[first])
    assert store.dependencies(then.id) == [(first.id, False)]
    # The same tables and indexes as a new file's (schema.sql), column for column.
    fresh = liteq.SQLiteStore(tmp_path / "fresh.sqlite")

    def listed(pragma: str, conn: apsw.Connection) -> list[tuple[object, ...]]:
        return sorted(row[1:] if "index_list" in pragma else row for row in conn.execute(pragma))

    for pragma in (
        "PRAGMA table_info(liteq_jobs)",
        "PRAGMA table_info(liteq_dependencies)",
        "PRAGMA index_list(liteq_jobs)",
        "PRAGMA index_list(liteq_dependencies)",
    ):
        assert listed(pragma, db) == listed(pragma, fresh._db()), pragma
    # (An index list's first column numbers indexes in the order they were made.)
    for name in (f"liteq_jobs_{index}" for index in ("claim", "active", "erred", "expiry")):
        pragma = f"PRAGMA index_xinfo({name})"
        assert list(db.execute(pragma)) == list(fresh._db().execute(pragma)), pragma
    indexes = "SELECT name, sql FROM sqlite_schema WHERE type IN ('index', 'view', 'trigger')"
    assert sorted(db.execute(indexes)) == sorted(fresh._db().execute(indexes))
    fresh.close()
    store.close()
