"""The counts of jobs per queue and status that `liteq status`, /metrics and the dashboard
read are kept by triggers in the file or database: exact with several processes writing at
once, after a process killed inside its transaction, after another program wrote to the
jobs, and after a migration from a schema that had none."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import psycopg
import pytest

import liteq
from liteq import Status, admin
from liteq.stores import JobQuery
from liteq.stores.sqlite.schema import SCHEMA_VERSION
from tests import pg
from tests.jobs import Noop

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'q.sqlite'}"
        return
    pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        yield pg.url(schema)
    finally:
        pg.drop_schema(schema)


def churn(url: str, seconds: str, seed: str, ready: str) -> None:
    """A producer and worker in one process: enqueue, claim, and end each claimed job in one
    of the ways a worker can, until `seconds` have passed (a child process's entry; it
    touches `ready` once it has the store open)."""
    store = liteq.connect(url)
    Path(ready).touch()
    rng = random.Random(int(seed))
    owner = f"churn-{os.getpid()}"
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        queue = rng.choice(["a", "b", "c"])
        if rng.random() < 0.5:
            store.enqueue_many([Noop(n) for n in range(rng.randint(1, 8))], queue=queue)
        else:
            store.enqueue(Noop(), queue=queue, delete_on_complete=rng.random() < 0.5)
        for mjob in store.claim_many(owner, queues=[queue], limit=rng.randint(1, 4)):
            way = rng.random()
            if way < 0.5:
                store.complete(mjob)
            elif way < 0.7:
                store.fail(mjob, "RuntimeError: churn", retry=rng.random() < 0.5)
            elif way < 0.8:
                store.wait_async(mjob)
            elif way < 0.9:
                store.release([mjob])
            else:
                store.delete(mjob.id)


def start_churn(url: str, seed: int, ready: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from tests.test_counts import churn; churn(*sys.argv[1:])"
    args = [url, "30", str(seed), str(ready / str(seed))]
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=os.environ)


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never started"
        time.sleep(0.01)


def scanned(store: liteq.stores.BaseStore) -> dict[tuple[str, Status], int]:
    every = JobQuery(limit=500)
    return dict(collections.Counter((m.queue, m.status) for m in admin.each(store, every)))


def nonzero(counts: dict[tuple[str, Status], int]) -> dict[tuple[str, Status], int]:
    return {key: n for key, n in counts.items() if n}


def kept(store: liteq.stores.BaseStore) -> dict[tuple[str, Status], int]:
    return {(row.queue, row.status): row.count for row in store.summary()}


@pytest.mark.timeout(60)
def test_counts_stay_exact_with_processes_writing_at_once_and_some_killed(
    url: str, tmp_path: Path
) -> None:
    # Four processes enqueue and finish jobs at once; one at a time, a while after it
    # started, one of them is killed (SIGKILL, often inside a transaction: most of their
    # time is spent in one) and another takes its place; in the end all four are killed.
    store = liteq.connect(url)
    procs = {seed: start_churn(url, seed, tmp_path) for seed in range(4)}
    killed = []
    try:
        for seed in range(4, 7):
            victim = random.choice(list(procs))
            wait_for(tmp_path / str(victim))
            time.sleep(random.uniform(0.1, 0.3))
            procs[victim].send_signal(signal.SIGKILL)
            killed.append(procs.pop(victim).wait())
            procs[seed] = start_churn(url, seed, tmp_path)
        for seed in procs:
            wait_for(tmp_path / str(seed))
        time.sleep(0.2)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.wait())
    assert killed == [-signal.SIGKILL] * 7, "a process ended before it was killed"
    # A killed process's server session may still be finishing the statement it was in
    # (PostgreSQL commits one sent on its own whether or not its client is still there),
    # and the scan reads page by page: compare once nothing changes any more.
    deadline = time.monotonic() + 10
    while kept(store) != nonzero(scanned(store)) and time.monotonic() < deadline:
        time.sleep(0.2)
    truth = scanned(store)
    assert sum(truth.values()) > 100, "the processes did too little to prove anything"
    assert kept(store) == nonzero(truth)
    assert store.check_counts() == []
    assert store.count() == sum(truth.values())
    store.close()


def _begin_and_wait(url: str, ready: Path) -> subprocess.Popen[bytes]:
    """A process that moves every queued job to RUNNING inside a transaction, and is then
    killed before it commits."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        code = (
            "import apsw, sys, time, pathlib; c = apsw.Connection(sys.argv[1]); "
            "c.execute('BEGIN IMMEDIATE'); "
            "c.execute(\"UPDATE liteq_jobs SET status = 'running' WHERE status = 'queued'\"); "
            "c.execute('DELETE FROM liteq_jobs WHERE id = 1'); "
            "pathlib.Path(sys.argv[2]).touch(); time.sleep(60)"
        )
        args = [path, str(ready)]
    else:
        dsn, schema = pg.dsn_or_skip(), url.rsplit("schema=", 1)[1]
        code = (
            "import psycopg, sys, time, pathlib; c = psycopg.connect(sys.argv[1]); "
            "c.execute(f\"UPDATE {sys.argv[3]}.jobs SET status = 'running' "
            "WHERE status = 'queued'\"); "
            'c.execute(f"DELETE FROM {sys.argv[3]}.jobs WHERE id = 1"); '
            "pathlib.Path(sys.argv[2]).touch(); time.sleep(60)"
        )
        args = [dsn, str(ready), schema]
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)


@pytest.mark.timeout(60)
def test_a_process_killed_inside_its_transaction_changes_no_count(url: str, tmp_path: Path) -> None:
    store = liteq.connect(url)
    store.enqueue_many([Noop(n) for n in range(20)], queue="q")
    ready = tmp_path / "ready"
    proc = _begin_and_wait(url, ready)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    store.enqueue(Noop(), queue="q")  # the next writer finds the killed one's work undone
    assert store.count(queue="q", status=Status.QUEUED) == 21
    assert store.count(status=Status.RUNNING) == 0
    assert store.check_counts() == []
    store.close()


def test_another_programs_inserts_and_deletes_are_counted_its_updates_found(
    tmp_path: Path,
) -> None:
    # An application's own connection (sqlite3, no liteq) inserts, moves and deletes rows.
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    # (Twenty: a batch that large is counted as inserted, so these changes move counters.)
    store.enqueue_many([Noop(n) for n in range(20)], queue="mail")
    conn = sqlite3.connect(path)
    (row,) = conn.execute("SELECT * FROM liteq_jobs WHERE id = 1").fetchall()
    names = [d[0] for d in conn.execute("SELECT * FROM liteq_jobs LIMIT 0").description]
    fields = dict(zip(names, row, strict=True)) | {"id": None, "queue": "sms"}
    columns, marks = ", ".join(fields), ", ".join("?" * len(fields))
    conn.execute(f"INSERT INTO liteq_jobs ({columns}) VALUES ({marks})", list(fields.values()))  # noqa: S608
    conn.execute("DELETE FROM liteq_jobs WHERE id = 5")
    conn.commit()
    # A claim, as another program might write it: a running job is counted where read.
    conn.execute("UPDATE liteq_jobs SET status = 'running' WHERE id = 1")
    conn.commit()
    assert kept(store) == {
        ("mail", Status.QUEUED): 18,
        ("mail", Status.RUNNING): 1,
        ("sms", Status.QUEUED): 1,
    }
    assert store.check_counts() == []
    # Other changes of status or queue are counted by liteq's own writes only (no trigger
    # on updates, for a claim's sake): `liteq db check` finds them, and repairs.
    conn.execute("UPDATE liteq_jobs SET status = 'failed' WHERE id IN (2, 3)")
    conn.execute("UPDATE liteq_jobs SET queue = 'sms' WHERE id = 4")
    conn.commit()
    conn.close()
    assert [(d.queue, d.status, d.kept, d.scanned) for d in store.check_counts()] == [
        ("mail", Status.FAILED, 0, 2),
        ("mail", Status.QUEUED, 18, 15),
        ("sms", Status.QUEUED, 1, 2),
    ]
    store.check_counts(repair=True)
    assert kept(store) == {
        ("mail", Status.QUEUED): 15,
        ("mail", Status.RUNNING): 1,
        ("mail", Status.FAILED): 2,
        ("sms", Status.QUEUED): 2,
    }
    assert store.check_counts() == []


def test_new_jobs_are_counted_from_the_tail_and_folded_in_as_ids_pass(tmp_path: Path) -> None:
    # SQLite's inserts fire no trigger: jobs newer than counted_to are counted where read,
    # and folded into the counters once in FOLD_EVERY ids, by whichever path inserted.
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    reader = liteq.SQLiteStore(path, readonly=True)
    owner = "w"
    try:
        for n in range(700):  # one per call (the autocommit insert), then batches
            store.enqueue(Noop(n), queue="a" if n % 3 else "b")
        store.enqueue_many([Noop(n) for n in range(450)], queue="c")
        app = sqlite3.connect(tmp_path / "app.db")  # (an application's transaction: shared)
        app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        app.close()
        shared = liteq.SQLiteStore(tmp_path / "app.db", shared=True)
        app = sqlite3.connect(tmp_path / "app.db")
        with app:
            for n in range(600):
                shared.enqueue(Noop(n), queue="a", connection=app)
        app.close()
        assert kept(shared) == scanned(shared) == {("a", Status.QUEUED): 600}
        shared.close()
        for n in range(300):
            store.enqueue(Noop(n), queue="a", coalesce_id=f"c{n}")  # (in a transaction)
        done = store.claim_many(owner, limit=900)  # counted jobs and tail jobs alike
        for mjob in done[:400]:
            store.complete(mjob)
        for mjob in done[400:500]:
            store.delete(mjob.id)
        store.release(done[500:])
        conn = apsw.Connection(str(path))
        counted_to, top = conn.execute(
            "SELECT counted_to, (SELECT max(id) FROM liteq_jobs) FROM liteq_meta"
        ).fetchone()
        conn.close()
        assert 1000 <= counted_to <= top and top - counted_to < 512
        assert kept(store) == scanned(store) == kept(reader)
        assert store.check_counts() == []
        assert store.count(queue="a", status=Status.QUEUED) == scanned(store)[("a", Status.QUEUED)]
    finally:
        reader.close()
        store.close()


def test_db_check_finds_counts_changed_by_hand_and_repairs_them(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    store.enqueue_many([Noop(n) for n in range(4)], queue="mail")
    store.close()
    conn = apsw.Connection(str(path))
    # (Four jobs not yet folded into the counters: a counter of 36 makes 40 of them.)
    conn.execute("INSERT INTO liteq_counts VALUES ('mail', 'queued', 36)")
    conn.execute("INSERT INTO liteq_counts VALUES ('gone', 'failed', 2)")
    conn.close()
    liteq_cmd = [sys.executable, "-m", "liteq", "db", "check", "--db", str(path), "--json"]
    found = subprocess.run(liteq_cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert found.returncode == 1, found.stderr
    assert json.loads(found.stdout)["counts"] == [
        {"queue": "gone", "status": "failed", "kept": 2, "scanned": 0},
        {"queue": "mail", "status": "queued", "kept": 40, "scanned": 4},
    ]
    repaired = subprocess.run([*liteq_cmd, "--repair"], capture_output=True, text=True, cwd=ROOT)
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["repaired"]
    again = subprocess.run(liteq_cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert again.returncode == 0 and json.loads(again.stdout)["counts"] == []
    assert liteq.SQLiteStore(path).count(queue="mail") == 4


def test_a_version_10_file_gets_counts_of_the_jobs_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "v10.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v10.sql").read_text()):
        pass
    now = time.time()
    insert = (
        "INSERT INTO liteq_jobs (job_type, payload, queue, priority, status, attempts, "
        "max_attempts, run_at, created_at, delete_on_complete) VALUES "
        '(\'tests.jobs.Noop\', \'{"type": "tests.jobs.Noop", "state": {"n": 1}}\', ?, 0, '
        "?, 0, 1, ?, ?, 1)"
    )
    # (Running jobs too: version 11 counted them as such, 14 where read.)
    jobs = (("a", "queued", 3), ("a", "failed", 2), ("b", "completed", 1), ("b", "running", 2))
    for queue, status, n in jobs:
        for _ in range(n):
            conn.execute(insert, (queue, status, now, now))
    conn.close()
    store = liteq.SQLiteStore(path)
    assert store._db().execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert kept(store) == {
        ("a", Status.QUEUED): 3,
        ("a", Status.FAILED): 2,
        ("b", Status.COMPLETED): 1,
        ("b", Status.RUNNING): 2,
    }
    claimed = store.claim("me", queues=["a"])
    assert claimed is not None
    assert (kept(store)[("a", Status.QUEUED)], kept(store)[("a", Status.RUNNING)]) == (2, 1)
    store.complete(claimed)
    assert store.count(queue="a") == 4 and store.check_counts() == []


def test_a_postgres_schema_of_version_6_gets_counts_of_the_jobs_it_holds() -> None:
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        store = liteq.PostgresStore(dsn, schema=schema)
        store.enqueue_many([Noop(n) for n in range(3)], queue="a")
        store.enqueue(Noop(), queue="b")
        store.close()
        # Back to version 6 as it was: no counts, no triggers keeping them; then jobs that
        # only a scan can count.
        with psycopg.connect(dsn, autocommit=True) as conn:
            for sql in (
                "DROP TABLE {s}.counts, {s}.count_changes",
                "DROP FUNCTION {s}.count_jobs CASCADE",
                "DROP FUNCTION {s}.fold_counts",
                "DROP INDEX {s}.jobs_erred",
                "UPDATE {s}.jobs SET status = 'failed' WHERE queue = 'b'",
                "UPDATE {s}.meta SET version = 6",
            ):
                conn.execute(sql.format(s=schema).encode())
        store = liteq.PostgresStore(dsn, schema=schema)
        assert kept(store) == {("a", Status.QUEUED): 3, ("b", Status.FAILED): 1}
        claimed = store.claim("me", queues=["a"])
        assert claimed is not None
        store.complete(claimed)
        assert store.count(queue="a") == 2 and store.check_counts() == []
        store.close()
    finally:
        pg.drop_schema(schema)


def test_counts_fold_on_postgres_and_read_the_same_before_and_after() -> None:
    # Each statement records its changes; about one in 128 folds them into the counters.
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        store = liteq.PostgresStore(dsn, schema=schema)
        for n in range(300):
            store.enqueue(Noop(n), queue="q")
        changes = f"SELECT count(*) FROM {schema}.count_changes"  # noqa: S608 - a test's own
        with psycopg.connect(dsn) as conn:
            unfolded = conn.execute(changes.encode()).fetchone()
        assert unfolded is not None and unfolded[0] < 130
        assert store.count(queue="q") == 300
        assert store.check_counts(repair=True) == []  # folds everything
        with psycopg.connect(dsn) as conn:
            left = conn.execute(changes.encode()).fetchone()
        assert left == (0,)
        assert store.count(queue="q") == 300
        store.close()
    finally:
        pg.drop_schema(schema)
