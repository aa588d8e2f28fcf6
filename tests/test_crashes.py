"""Jobs that kill their worker: a crash loop ends after max_crashes deaths, a job past
--max-rss is stopped while it runs, and HUP's rolling restart keeps a worker serving.

Real `liteq work` processes, real signals, real files (and PostgreSQL where it says so). The
job classes below are imported by the workers (`--import tests.test_crashes`).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import apsw
import psutil
import pytest

import liteq
from liteq import Status
from liteq.stores.sqlite.schema import SCHEMA_VERSION
from liteq.worker.identity import host
from tests import pg
from tests.conftest import OWNER
from tests.helpers import ROOT, liteq_work, wait_until
from tests.jobs import Noop, trace
from tests.traces import runs_by_job


class Poison(liteq.Job):
    """Kills the process that runs it, every time: os._exit(7) or a real segfault."""

    def __init__(self, path: str, how: str) -> None:
        self.path = path
        self.how = how

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        if self.how == "segfault":
            faulthandler.disable()  # die quietly of the signal
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        os._exit(7)


class Fine(liteq.Job):
    """Records that it ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        trace(self.path, job.id, "end", job.attempts)


class Balloon(liteq.Job):
    """Allocates `mb` MiB, 16 MiB every 10 ms (about 1.6 GiB a second), and keeps it."""

    kept: ClassVar[list[bytes]] = []

    def __init__(self, path: str, mb: int) -> None:
        self.path = path
        self.mb = mb

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        for _ in range(self.mb // 16):
            Balloon.kept.append(b"x" * (16 << 20))  # (written, so resident)
            time.sleep(0.01)
        trace(self.path, job.id, "end", job.attempts)


class Swallower(liteq.Job):
    """On its first attempt swallows whatever is raised in it (Interrupted too), so that its
    worker must exit hard; later attempts return at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        deadline = time.monotonic() + 60
        while job.attempts == 1 and time.monotonic() < deadline:
            with contextlib.suppress(BaseException):  # the point: a job that will not stop
                time.sleep(0.05)
        trace(self.path, job.id, "end", job.attempts)


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new queue's URL: an SQLite file, or a schema of the test server's."""
    if request.param == "sqlite":
        path = tmp_path / "q.sqlite"
        liteq.SQLiteStore(path).close()
        yield str(path)
        return
    schema = pg.new_schema()
    yield pg.url(schema)
    pg.drop_schema(schema)


class Work:
    """A running `liteq work` (with this module's job classes) and its log."""

    def __init__(self, db: str, log: Path, *args: str) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = liteq_work(
            db,
            "--import",
            "tests.test_crashes",
            "--wakeup-every",
            "0.5",
            *args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def children(self) -> list[psutil.Process]:
        """Its live workers (not the zombies it has yet to reap)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        live = []
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if kid.status() != psutil.STATUS_ZOMBIE:
                    live.append(kid)
        return live

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        for pid in [c.pid for c in self.children()] + [self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def work() -> Iterator[list[Work]]:
    started: list[Work] = []
    yield started
    for w in started:
        w.kill()


def start(started: list[Work], db: str, log: Path, *args: str) -> Work:
    w = Work(db, log, *args)
    started.append(w)
    return w


def status_json(db: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "liteq", "status", "--json", "--db", db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


# -- item 3: a crash loop ends ----------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_job_that_kills_its_worker_fails_for_good_after_three_deaths(
    tmp_path: Path, queue: str, work: list[Work]
) -> None:
    path = str(tmp_path / "q.trace")
    store = liteq.connect(queue)
    exits = store.enqueue(Poison(path, "exit"))
    segfaults = store.enqueue(Poison(path, "segfault"))
    fine = store.enqueue_many([Fine(path) for _ in range(20)])
    w = start(work, queue, tmp_path / "work.log", "--processes", "2")

    def settled() -> bool:
        return all(store.get(m.id).status is Status.FAILED for m in (exits, segfaults))

    wait_until(settled, 120, "both poison jobs to fail")
    wait_until(lambda: store.count() == 2, 60, "the other jobs")  # (done ones are deleted)
    runs = runs_by_job(Path(path))
    assert len(runs[exits.id]) == 3 and len(runs[segfaults.id]) == 3
    assert all([r["end"] is not None for r in runs[m.id]] == [True] for m in fine)
    exited, segfaulted = store.get(exits.id), store.get(segfaults.id)
    assert exited.error == "the worker running it died 3 times (exit status 7)"
    assert segfaulted.error == "the worker running it died 3 times (signal 11)"
    assert exited.record.crashes == segfaulted.record.crashes == 3
    assert exited.attempts == 3  # (each death before the last was a mulligan)
    assert "failed for good" in w.log()
    # Nothing runs them again, and the workers go on serving.
    time.sleep(1.5)
    assert len(runs_by_job(Path(path))[exits.id]) == 3
    assert len(w.children()) == 2
    later = store.enqueue_many([Fine(path) for _ in range(5)])  # (run by workers that live)
    wait_until(lambda: store.count() == 2, 60, "the jobs enqueued after")
    assert all(runs_by_job(Path(path))[m.id] for m in later)
    assert w.stop() == 0  # (its workers' last beats tell what they completed)
    (shown,) = status_json(queue)["queues"]  # type: ignore[misc]
    assert shown["counts"] == {"failed": 2}
    # Each death was an attempt that failed, as `liteq status` counts them.
    # (Completions count at a worker's beat: one that dies takes the count of its last few
    # seconds with it, so fewer may show than ran; never more. Those of the workers alive
    # at the end, the last five at least, all show.)
    assert shown["failed"]["15m"] == 6 and 5 <= shown["completed"]["15m"] <= 25
    store.close()


@pytest.mark.timeout(120)
def test_the_number_of_deaths_is_configurable(tmp_path: Path, work: list[Work]) -> None:
    db, path = tmp_path / "q.sqlite", str(tmp_path / "q.trace")
    store = liteq.SQLiteStore(db)
    poison = store.enqueue(Poison(path, "segfault"), max_attempts=5)
    w = start(work, str(db), tmp_path / "work.log", "--max-crashes", "1")
    wait_until(lambda: store.get(poison.id).status is Status.FAILED, 60, "the job to fail")
    assert len(runs_by_job(Path(path))[poison.id]) == 1  # attempts left do not matter
    assert store.get(poison.id).error == "the worker running it died once (signal 11)"
    assert w.stop() == 0
    for bad in ("0", "x"):
        refused = subprocess.run(
            [sys.executable, "-m", "liteq", "work", "--db", str(db), "--max-crashes", bad],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "--max-crashes" in refused.stderr
    with pytest.raises(ValueError, match="max_crashes"):
        liteq.Worker(store, max_crashes=0)


def test_jobs_finished_before_a_poison_job_in_a_prefetched_batch_run_again_at_most_once(
    tmp_path: Path, work: list[Work]
) -> None:
    # A batch's completions are recorded together, a little later; a job that crashes the
    # worker before they are loses them, and those jobs run again. Once a job has taken a
    # worker down, the completions before it are recorded first: one re-run, not one a death.
    db, path = tmp_path / "q.sqlite", str(tmp_path / "q.trace")
    store = liteq.SQLiteStore(db)
    before = store.enqueue_many([Fine(path) for _ in range(4)])
    poison = store.enqueue(Poison(path, "exit"))
    after = store.enqueue_many([Fine(path) for _ in range(4)])
    w = start(work, str(db), tmp_path / "work.log", "--prefetch", "5")
    wait_until(lambda: store.get(poison.id).status is Status.FAILED, 60, "the poison to fail")
    wait_until(lambda: store.count() == 1, 60, "the other jobs")
    assert w.stop() == 0
    runs = runs_by_job(Path(path))
    assert len(runs[poison.id]) == 3
    counts = {m.id: len(runs[m.id]) for m in [*before, *after]}
    assert all(1 <= n <= 2 for n in counts.values()), counts


@pytest.mark.soak  # (two hard exits, 5 s each: ~14 s; `pytest -m soak`)
@pytest.mark.timeout(120)
def test_a_worker_stopped_on_purpose_is_no_crash_but_one_past_max_runtime_is(
    tmp_path: Path, work: list[Work]
) -> None:
    # Both jobs will not be interrupted, so their workers exit hard (5 s later). A TERM past
    # the graceful timeout is a stop we asked for: its job is handed back with no crash. A
    # job past its max_runtime took its worker down: a crash (here the first and last).
    db, path = tmp_path / "q.sqlite", str(tmp_path / "q.trace")
    store = liteq.SQLiteStore(db)
    stopped = store.enqueue(Swallower(path))
    w = start(work, str(db), tmp_path / "a.log", "--graceful-timeout", "0.5", "--max-crashes", "1")
    wait_until(lambda: Path(path).exists(), 30, "the job to start")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    again = store.get(stopped.id)
    assert (again.status, again.record.crashes) == (Status.QUEUED, 0), again.error
    store.delete(stopped.id)

    overran = store.enqueue(Swallower(path), max_runtime=0.5)
    w = start(work, str(db), tmp_path / "b.log", "--max-crashes", "1")
    wait_until(lambda: store.get(overran.id).status is Status.FAILED, 30, "the job to fail")
    # (Its worker exits hard, or the supervisor's hung-job check kills it first.)
    error = store.get(overran.id).error or ""
    assert error.startswith("the worker running it died once (")
    assert "could not be interrupted" in error or "max_runtime=0.5s" in error, error
    assert w.stop() == 0


def test_deaths_are_counted_in_the_row_and_only_deaths_count(store: liteq.Store) -> None:
    # The store's part, on every store: a rescue that says the worker died counts a crash
    # (a mulligan until max_crashes, then FAILED for good); any other rescue counts none.
    from liteq.stores.contract import Hung  # (inside: so that older code fails only here)

    mjob = store.enqueue(Noop(1))

    def rescue(verdict: Hung) -> liteq.ManagedJob:
        (claimed,) = store.claim_many(OWNER)
        rescued = store.rescue(claimed.record, lambda rec, now, mono: verdict)
        assert rescued is not None
        return rescued

    first = rescue(Hung("its worker died", "signal 9", 3))
    assert (first.status, first.record.crashes, first.max_attempts) == (Status.QUEUED, 1, 2)
    assert "it fails for good at 3" in (first.error or "")
    stopped = rescue(Hung("the worker was stopped"))  # a deliberate stop: no death
    assert (stopped.status, stopped.record.crashes) == (Status.QUEUED, 1)
    second = rescue(Hung("its worker died", "signal 9", 3))
    assert (second.status, store.get(mjob.id).record.crashes) == (Status.QUEUED, 2)
    third = rescue(Hung("its worker died", "signal 11", 3))
    assert third.status is Status.FAILED
    again = store.get(mjob.id)
    assert again.error == "the worker running it died 3 times (signal 11)"
    assert again.record.crashes == 3 and again.finished_at is not None
    assert again.record.owner is None
    assert store.count(status=Status.FAILED) == 1
    # An operator's retry forgives its deaths; so does a restart.
    assert again.retry(mulligan=True)
    assert store.get(mjob.id).record.crashes == 0
    rescue(Hung("its worker died", "signal 9", 3))
    assert store.get(mjob.id).record.crashes == 1
    store.get(mjob.id).restart()
    assert store.get(mjob.id).record.crashes == 0


def test_a_worker_found_dead_is_blamed_only_for_the_one_job_it_held(
    store: liteq.Store,
) -> None:
    # Without its supervisor's word (it died too), a dead worker's death is its job's only
    # if it held that one job: with prefetch it held several, and which one ran is unknown.
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    gone = f"{host()}/{int(dead.stdout)}/1/cafe"  # a pid that no longer names that process
    alone = store.enqueue(Noop(1))
    store.claim_many(gone)
    (rescued,) = store.detect_hung_jobs()
    assert rescued.id == alone.id and rescued.record.crashes == 1
    assert "is gone" in (rescued.error or "")
    batch = store.enqueue_many([Noop(2), Noop(3)])
    assert len(store.claim_many(gone + "2", limit=5)) == 3
    rescued_all = store.detect_hung_jobs()
    assert sorted(m.id for m in rescued_all) == sorted([alone.id, *(m.id for m in batch)])
    assert all(m.record.crashes == (1 if m.id == alone.id else 0) for m in rescued_all)


def test_an_older_file_gets_the_count_of_deaths(tmp_path: Path) -> None:
    path = tmp_path / "v6.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v6.sql").read_text()):
        pass
    now = time.time()
    conn.execute(
        "INSERT INTO liteq_jobs (id, job_type, payload, queue, priority, status, attempts, "
        "max_attempts, run_at, created_at, delete_on_complete, owner, lease_until, "
        "started_at) VALUES (1, 'tests.jobs.Noop', ?, 'default', 0, 'running', 1, 1, ?, ?, "
        "1, 'worker-a', ?, ?)",
        (json.dumps({"type": "tests.jobs.Noop", "state": {"n": 1}}), now, now, now + 60, now),
    )
    conn.close()
    store = liteq.SQLiteStore(path)
    db = store._db()
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    running = store.get(1)
    assert (running.status, running.record.crashes) == (Status.RUNNING, 0)
    store.enqueue_many([Noop(2), Noop(3)])  # the batch insert names every column
    assert [m.record.crashes for m in store.jobs()] == [0, 0, 0]


def test_an_older_postgres_schema_gets_the_count_of_deaths() -> None:
    import psycopg

    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        first = liteq.PostgresStore(dsn, schema=schema)
        job = first.enqueue(Noop(1))
        first.close()
        with psycopg.connect(dsn, autocommit=True) as conn:  # as version 2 left it
            for sql in (
                f'ALTER TABLE "{schema}".jobs DROP COLUMN crashes',
                f'UPDATE "{schema}".meta SET version = 2',  # noqa: S608
            ):
                conn.execute(sql.encode())
        store = liteq.PostgresStore(dsn, schema=schema)
        try:
            assert store.get(job.id).record.crashes == 0
            store.enqueue_many([Noop(2), Noop(3)])
            assert [m.record.crashes for m in store.jobs()] == [0, 0, 0]
        finally:
            store.close()
    finally:
        pg.drop_schema(schema)


# -- item 4: --max-rss while a job runs --------------------------------------------------


@pytest.mark.timeout(120)
def test_a_job_past_max_rss_is_stopped_while_it_runs(tmp_path: Path, work: list[Work]) -> None:
    db, path = tmp_path / "q.sqlite", str(tmp_path / "q.trace")
    store = liteq.SQLiteStore(db)
    balloon = store.enqueue(Balloon(path, 1024))
    limits = ("--max-rss", "200MB", "--max-crashes", "1")
    w = start(work, str(db), tmp_path / "work.log", "--processes", "2", *limits)
    wait_until(lambda: store.get(balloon.id).status is Status.FAILED, 30, "the job to be stopped")
    failed = store.get(balloon.id)
    (run,) = runs_by_job(Path(path))[balloon.id]
    assert run["end"] is None  # it never got to the end of its gigabyte
    assert failed.finished_at is not None
    assert failed.finished_at.timestamp() - float(run["start"]) < 2.5  # type: ignore[arg-type]
    found = re.fullmatch(
        r"the worker running it died once \(stopped at (\d+) MiB RSS, over --max-rss 200 MiB\)",
        failed.error or "",
    )
    assert found is not None, failed.error
    assert 200 < int(found.group(1)) < 800
    # The other worker, and the replacement of the one stopped, go on.
    fine = store.enqueue_many([Fine(path) for _ in range(10)])
    wait_until(lambda: store.count() == 1, 30, "the other jobs")  # (done ones are deleted)
    runs = runs_by_job(Path(path))
    assert all([r["end"] is not None for r in runs[m.id]] == [True] for m in fine)
    wait_until(lambda: len(w.children()) == 2, 10, "a replacement worker")
    assert w.stop() == 0


@pytest.mark.timeout(120)
def test_a_worker_alone_stops_a_job_past_max_rss_too(tmp_path: Path) -> None:
    # No supervisor: the worker's heartbeat reads its RSS while the job runs, stops the job
    # (as a crash of it) and the worker returns 1 for a fresh one to start.
    db, path = tmp_path / "q.sqlite", str(tmp_path / "q.trace")
    store = liteq.SQLiteStore(db)
    balloon = store.enqueue(Balloon(path, 1024))
    code = (
        "import liteq, sys, tests.test_crashes; sys.exit(liteq.Worker(liteq.SQLiteStore("
        "sys.argv[1]), jitter=False, exit_if_no_jobs=True, max_rss=200 << 20, max_crashes=2"
        ").start())"
    )
    worker = subprocess.run([sys.executable, "-c", code, str(db)], cwd=ROOT, timeout=60)
    assert worker.returncode == 1  # (memory: a fresh worker should take over)
    again = store.get(balloon.id)
    assert again.status is Status.QUEUED and again.record.crashes == 1
    found = re.fullmatch(
        r"the worker running it was stopped at (\d+) MiB RSS, over max_rss 200 MiB "
        r"\(worker deaths: 1; it fails for good at 2\)",
        again.error or "",
    )
    assert found is not None, again.error
    assert 200 < int(found.group(1)) < 800
    (run,) = runs_by_job(Path(path))[balloon.id]
    assert run["end"] is None


# -- item 13: HUP's rolling restart ------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_rolling_restart_waits_for_each_replacement_to_be_ready(
    tmp_path: Path, work: list[Work]
) -> None:
    db = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(db)
    w = start(work, str(db), tmp_path / "work.log", "--processes", "2")
    wait_until(lambda: len(store.workers()) == 2, 30, "two registered workers")
    old = {c.pid for c in w.children()}
    assert len(old) == 2
    w.proc.send_signal(signal.SIGHUP)
    serving: list[tuple[float, int, int]] = []  # (when, old alive, new ready)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = {c.pid for c in w.children()}
        registered = {info.pid for info in store.workers()}
        new_ready = (alive - old) & registered
        serving.append((time.monotonic(), len(alive & old), len(new_ready)))
        if not alive & old and len(new_ready) == 2:
            break
    else:
        raise AssertionError(f"the rolling restart did not finish: {serving[-1]}")
    gaps = [s for s in serving if s[1] + s[2] == 0]
    assert not gaps, f"no worker served for {gaps[-1][0] - gaps[0][0]:.3f}s"
    # And the restart is still one at a time: never both old ones gone at once.
    assert all(s[1] >= 1 or s[2] >= 1 for s in serving)
    assert w.stop() == 0
