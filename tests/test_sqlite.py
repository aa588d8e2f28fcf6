"""SQLiteStore itself: the file, pragmas, schema, fork safety, and many processes at once."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import sqlite3
import stat
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
    with pytest.raises(liteq.StoreError, match="not a usable SQLite database"):
        liteq.SQLiteStore(garbage)
    other = tmp_path / "other.sqlite"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(liteq.StoreError, match="another application's database"):
        liteq.SQLiteStore(other)
    with pytest.raises(liteq.StoreError, match="not a directory"):
        liteq.SQLiteStore(tmp_path / "missing" / "q.sqlite")
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
    assert {"liteq_jobs_claim", "liteq_jobs_coalesce", "liteq_jobs_high_water"} <= schema
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
    assert "liteq_jobs_high_water" in schema and "liteq_jobs_v3" not in schema
    # A job claimed before the migration is rescued by its lease, as it was then.
    later = liteq.SQLiteStore(path, clock=lambda: now + 61)
    assert [m.id for m in later.detect_hung_jobs()] == [1]


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
    # (schema.sql), and so does an INSERT … SELECT that reads the table it fills (its rows
    # are copied aside first): an enqueue, a batch enqueue and a completion must not.
    batches = (sqlite.INSERT_ALIKE, sqlite.INSERT_ALIKE_OF_TYPE)
    for sql in (sqlite.INSERT_OR_NOTHING, sqlite.INSERT, *batches, sqlite.DELETE_FENCED):
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


def test_a_batch_stores_each_job_exactly_as_one_enqueue_would(tmp_path: Path) -> None:
    from tests.helpers import encode

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
