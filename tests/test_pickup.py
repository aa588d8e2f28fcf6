"""Idle pick-up on SQLite: a commit by any process wakes idle workers at once (Linux: inotify
on the queue's write-ahead log; elsewhere, or with LITEQ_NO_INOTIFY set, a poll).

The waiting processes here poll every 30 s (SQLiteStore's POLL and IDLE_POLL, set before
the store is made): only a report of the commit can wake them within the BOUND asked.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import liteq
from liteq.stores.sqlite.walwatch import DISABLE_ENV, WalWatch
from tests.helpers import ROOT, liteq_work, wait_until
from tests.jobs import Noop

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")

#: How soon after a commit an idle waiter must be woken: typically 1-3 ms, but the suite
#: shares two cores with other tests, which stall a process for a few hundred ms at times.
BOUND = 0.5

# A process that claims (finding nothing), says "ready", waits for jobs up to 5 s, and
# says when it woke; `rounds` times. With `fork`, it forks after its first claim, and
# parent and child each do the rounds, claiming from a queue nothing is put in (a claim of
# one would be a commit that wakes the other).
WAITER = """
import os, sys, time
import liteq
from liteq.stores.sqlite import store as sqlite_store

def say(*words):  # one write each: parent and child share the pipe
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())

if sys.argv[2] == "slow":
    sqlite_store.POLL = sqlite_store.IDLE_POLL = 30.0
store = liteq.SQLiteStore(sys.argv[1])
store.claim("waiter")
child = os.fork() if sys.argv[4] == "fork" else -1
queues = ["nothing-here"] if sys.argv[4] == "fork" else None
for _ in range(int(sys.argv[3])):
    while (job := store.claim("waiter", queues)) is not None:
        store.complete(job)
    say("ready", os.getpid())
    woke = store.wait_for_jobs(None, 5.0)
    say("woke" if woke else "slept", time.time())
    os.read(0, 1)  # the next round, once told (one byte each: the pipe is shared too)
if child == 0:
    os._exit(0)
if child > 0:
    os.waitpid(child, 0)
"""


@contextlib.contextmanager
def waiter(
    db: Path,
    rounds: int = 1,
    *,
    slow: bool = True,
    fork: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    args = [str(db), "slow" if slow else "default", str(rounds), "fork" if fork else "-"]
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.close()
        proc.stdin.close()


def ready(proc: subprocess.Popen[str]) -> int:
    """The pid of the waiting process that says it is about to wait."""
    assert proc.stdout is not None
    word, pid = proc.stdout.readline().split()
    assert word == "ready"
    return int(pid)


def woken_after(proc: subprocess.Popen[str], committed: float) -> float:
    """Seconds from `committed` until the waiter woke; fails if it slept its 5 s out."""
    assert proc.stdout is not None
    word, at = proc.stdout.readline().split()
    assert word == "woke", "the waiter slept 5 s through the commit"
    return float(at) - committed


def next_round(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def watched_directories(pid: int) -> set[int]:
    """The inodes of what `pid`'s inotify instances watch (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("inotify "):
                    field = next(f for f in line.split() if f.startswith("ino:"))
                    inodes.add(int(field[4:], 16))
    return inodes


def commit_plainly(db: Path) -> None:
    """A commit to the queue file that liteq does not make: an application's own table."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS app_notes (note TEXT)")
        conn.execute("INSERT INTO app_notes VALUES ('hello')")
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "q.sqlite"
    liteq.SQLiteStore(path).close()
    return path


# -- a worker ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_an_idle_worker_starts_a_job_another_process_enqueued_at_once(
    db: Path, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    store = liteq.SQLiteStore(db)
    work = liteq_work(db, "--processes", "1", stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(store.workers()) == 1, 30, "the worker to start")
        time.sleep(3.5)  # idle for a while: no fast poll left from start-up
        (pid,) = (w.pid for w in store.workers())
        assert os.stat(db.parent).st_ino in watched_directories(pid)  # the kernel will tell
        enqueue = "import sys, time, liteq; from tests.jobs import Logs; "
        enqueue += "s = liteq.SQLiteStore(sys.argv[1]); t = time.time(); "
        enqueue += "s.enqueue(Logs(sys.argv[2])); print(t)"
        out = subprocess.run(
            [sys.executable, "-c", enqueue, str(db), str(log)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        enqueued = float(out.stdout)
        wait_until(lambda: log.exists() and log.read_text().strip(), 10, "the job to run")
        started = json.loads(log.read_text())["start"]
        assert started - enqueued < BOUND, f"started {started - enqueued:.3f} s after"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(work.pid, signal.SIGTERM)
        work.wait(30)
        store.close()


# -- what wakes a waiter ---------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_no_commit_is_missed_even_one_made_just_before_the_wait(db: Path) -> None:
    # The commits land at random moments around the waiter's claim and wait, some in
    # between: each must wake it at once.
    store = liteq.SQLiteStore(db)
    rounds = 12
    with waiter(db, rounds) as proc:
        for n in range(rounds):
            ready(proc)
            time.sleep(random.choice([0.0, 0.0, 0.0005, 0.002, 0.01, 0.05]))
            committed = time.time()
            store.enqueue(Noop(n))
            assert woken_after(proc, committed) < BOUND
            next_round(proc)
    store.close()


@pytest.mark.timeout(60)
def test_a_commit_not_made_by_liteq_wakes_a_waiter(db: Path) -> None:
    with waiter(db) as proc:
        ready(proc)
        time.sleep(0.2)
        committed = time.time()
        commit_plainly(db)
        assert woken_after(proc, committed) < BOUND


@pytest.mark.timeout(60)
def test_a_forked_waiter_is_woken_as_is_its_parent(db: Path) -> None:
    # Each process reads its own reports: were the parent's instance shared, one commit
    # would wake one of them only.
    store = liteq.SQLiteStore(db)
    with waiter(db, 2, fork=True) as proc:
        for n in range(2):
            pids = {ready(proc), ready(proc)}
            assert len(pids) == 2
            for pid in pids:
                assert os.stat(db.parent).st_ino in watched_directories(pid)
            time.sleep(0.1)
            committed = time.time()
            store.enqueue(Noop(n))
            assert woken_after(proc, committed) < BOUND
            assert woken_after(proc, committed) < BOUND
            next_round(proc)
            next_round(proc)
    store.close()


@pytest.mark.timeout(60)
def test_with_inotify_turned_off_waiters_poll_as_before(db: Path) -> None:
    store = liteq.SQLiteStore(db)
    with waiter(db, slow=False, env={DISABLE_ENV: "1"}) as proc:  # (polls every 50 ms)
        pid = ready(proc)
        time.sleep(0.3)
        assert watched_directories(pid) == set()
        committed = time.time()
        store.enqueue(Noop())
        assert woken_after(proc, committed) < BOUND
    store.close()


# -- the watch itself ----------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_the_log_deleted_and_made_again_is_still_watched(db: Path) -> None:
    # The last connection to close deletes `-wal`; the next writer makes a new file.
    wal = Path(f"{db}-wal")
    watch = WalWatch(str(db))
    reported = threading.Event()
    try:
        for _ in range(2):
            assert not wal.exists()
            assert watch.want(reported.set)
            writer = f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
            writer += "c.execute('CREATE TABLE IF NOT EXISTS app_notes (note TEXT)'); "
            writer += "c.execute(\"INSERT INTO app_notes VALUES ('hi')\"); c.commit(); c.close()"
            subprocess.run([sys.executable, "-c", writer], check=True, timeout=30)
            assert reported.wait(5), "no report of the write by another process"
            reported.clear()
    finally:
        watch.close()
    assert not watch.armed()


def test_a_store_dropped_unclosed_ends_its_watch(db: Path) -> None:
    def watching() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("liteq-walwatch")}

    others = watching()  # (of stores other tests in this process left open)
    store = liteq.SQLiteStore(db)
    assert store.claim("w") is None  # armed while it looked for a job
    before = watching() - others
    assert before
    del store
    gc.collect()
    wait_until(lambda: not any(t.is_alive() for t in before), 5, "the watching thread to end")
    assert os.stat(db.parent).st_ino not in watched_directories(os.getpid())


def test_a_reopened_connection_is_never_taken_for_one_that_saw_no_commit(db: Path) -> None:
    # PRAGMA data_version counts per connection: a new one may give the number the old one
    # gave before a commit it never saw, and a waiter would sleep through that commit.
    store = liteq.SQLiteStore(db)
    other = liteq.SQLiteStore(db)
    try:
        before = store._data_version()
        store.close()  # (as around fork(), or after an error)
        other.enqueue(Noop())
        assert store._data_version() != before
    finally:
        other.close()
        store.close()
