"""An operator's bad day, with real processes, signals and files: the promises must hold."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import psutil
import pytest

import liteq
import liteq.worker.heartbeat
from liteq.worker.identity import owner_state
from tests import pg
from tests.helpers import ROOT, bare_worker, wait_until
from tests.jobs import Noop, Sleeps, SlowFirst, Traced
from tests.traces import assert_runs_never_overlap, runs_by_job


def integrity(path: Path) -> str:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
    except apsw.CorruptError as exc:
        return str(exc)
    finally:
        conn.close()


def start_work(db: Path | str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("a") as out:
        command = ["work", "--db", str(db), "--import", "tests.jobs", "--no-jitter"]
        return subprocess.Popen(
            [sys.executable, "-m", "liteq", *command, "--wakeup-every", "0.5", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def gone(pids: set[int]) -> bool:
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
    return True


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new queue's URL: an SQLite file, or a schema of the test server's."""
    if request.param == "sqlite":
        yield str(tmp_path / "q.sqlite")
        return
    schema = pg.new_schema()
    yield pg.url(schema)
    pg.drop_schema(schema)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("victims", ["supervisor", "supervisor and workers"])
# (On PostgreSQL a minute more: in the soak run, `pytest -m soak`. Its promises there are
# held by test_concurrency's SIGKILLs and test_postgres's server restarts by default.)
@pytest.mark.parametrize(
    "queue", ["sqlite", pytest.param("postgres", marks=pytest.mark.soak)], indirect=True
)
def test_killing_the_supervisor_and_restarting_at_once_keeps_every_promise(
    tmp_path: Path, queue: str, victims: str
) -> None:
    # What `Restart=always` does after an OOM kill: a new supervisor starts at once, while
    # the old one's workers (when only it died) are still finishing their jobs.
    db, log, trace = queue, tmp_path / "work.log", tmp_path / "q.trace"
    # (PostgreSQL runs them slower: fewer still outlast the storm, as asserted below.)
    jobs = 10_000 if queue.startswith("postgresql:") else 16_000
    store = liteq.connect(db)
    store.enqueue_many([Traced(str(trace), 0.001) for _ in range(jobs)])
    store.close()
    killed: dict[int, float] = {}
    every_pid: set[int] = set()
    proc = start_work(db, log, "--processes", "2")
    for _ in range(5):
        wait_until(lambda: len(children(proc.pid)) == 2, 20, "two workers")  # noqa: B023
        time.sleep(1.2)
        workers = children(proc.pid)
        every_pid.update(workers)
        os.kill(proc.pid, signal.SIGKILL)
        if victims != "supervisor":
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed[pid] = time.time()
        proc.wait()
        proc = start_work(db, log, "--processes", "2")
    reader = liteq.connect(db)
    assert reader.count() > 0, "the storm ended after the jobs: give it more"
    wait_until(lambda: len(children(proc.pid)) == 2, 20, "two workers")
    wait_until(lambda: reader.count() == 0, 120, "every job to complete")
    every_pid.update(children(proc.pid))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    wait_until(lambda: gone(every_pid), 30, "the old supervisors' workers to exit")
    reader.close()

    if not db.startswith("postgresql:"):
        assert integrity(Path(db)) == "ok"
    runs = runs_by_job(trace)
    assert len(runs) == jobs, "some jobs never ran"
    assert_runs_never_overlap(runs, killed)
    attempts = Counter((job_id, run["attempt"]) for job_id, rs in runs.items() for run in rs)
    assert max(attempts.values()) == 1, "a job was claimed twice at the same attempt"
    assert "malformed" not in log.read_text()


def in_child(body: Callable[[], None]) -> int:
    """Run `body` in a forked child of this process; return its exit code (1 if it raised)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_parent_that_forked_loses_none_of_its_childrens_enqueues_when_it_closes(
    tmp_path: Path,
) -> None:
    # The parent had its store open when it forked; the children enqueue on their own
    # connections while the parent goes on using, then closes, its own.
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    store.enqueue(Noop(-1))

    def enqueue(first: int) -> Callable[[], None]:
        def body() -> None:
            assert not apsw.connections(), "a connection was open across fork()"
            for n in range(first, first + 4000):
                store.enqueue(Noop(n))

        return body

    pids = [in_child(enqueue(0)), in_child(enqueue(10_000))]
    time.sleep(0.2)
    store.enqueue(Noop(-2))
    store.close()
    assert [exit_code(pid) for pid in pids] == [0, 0]
    assert integrity(path) == "ok"
    after = liteq.SQLiteStore(path)
    ns = sorted(m.job.n for m in after.jobs())  # type: ignore[union-attr]
    assert ns == [-2, -1, *range(4000), *range(10_000, 14_000)]


def test_a_file_another_connection_held_across_fork_is_refused_in_the_child(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite"
    liteq.SQLiteStore(path).enqueue(Noop(1))
    raw = apsw.Connection(str(path))  # not liteq's: it cannot be closed before fork()
    raw.execute("SELECT count(*) FROM liteq_jobs").fetchall()

    def body() -> None:
        with pytest.raises(liteq.StoreError, match="was open in this process's parent when"):
            liteq.SQLiteStore(path)

    assert exit_code(in_child(body)) == 0
    raw.close()
    assert liteq.SQLiteStore(path).count() == 1


def run_liteq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liteq", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def set_payload(path: Path, job_id: int, payload: str) -> None:
    """Write a job's payload by hand, as a bug, an old version or an attacker might."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("UPDATE liteq_jobs SET payload = ? WHERE id = ?", (payload, job_id))
    finally:
        conn.close()


def test_a_poison_payload_fails_its_job_and_liteq_work_goes_on(tmp_path: Path) -> None:
    db, trace = tmp_path / "q.sqlite", tmp_path / "q.trace"
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Traced(str(trace)) for _ in range(20)])
    poison = store.enqueue(Noop(0), max_attempts=3)
    store.close()
    deep = "[" * 990 + "]" * 990  # accepted by an older liteq; decoding it blows the stack
    set_payload(db, poison.id, f'{{"type": "tests.jobs.Noop", "state": {{"n": {deep}}}}}')

    shown = run_liteq("jobs", "--db", str(db), "--import", "tests.jobs")
    assert shown.returncode == 0 and "nests too deeply" in shown.stdout, shown.stderr
    result = run_liteq("work", "--db", str(db), "--import", "tests.jobs", "--burst", "-n", "2")
    assert result.returncode == 0, result.stderr
    after = liteq.SQLiteStore(db)
    assert after.count() == 1 and len(runs_by_job(trace)) == 20
    failed = after.get(poison.id)
    assert failed.status is liteq.Status.FAILED and failed.attempts == 1
    assert "nests too deeply to decode" in (failed.error or "")
    assert "crashed" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["rm the file", "rm all three files", "mv another queue over it"])
def test_a_queue_file_deleted_or_replaced_under_running_processes(tmp_path: Path, how: str) -> None:
    db, log, trace = tmp_path / "q.sqlite", tmp_path / "work.log", tmp_path / "q.trace"
    other = tmp_path / "other.sqlite"
    kept = liteq.SQLiteStore(other)
    kept.enqueue_many([Noop(n) for n in range(7)], queue="elsewhere")
    kept.close()
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Traced(str(trace), 0.002) for _ in range(200)])
    store.close()
    work = start_work(db, log, "--processes", "2")
    out = tmp_path / "producer.json"
    produce = ["produce_until_refused", str(db), str(trace), str(out)]
    producer = subprocess.Popen([sys.executable, "-m", "tests.procs", *produce], cwd=ROOT)
    try:
        wait_until(lambda: trace.exists() and len(runs_by_job(trace)) > 50, 30, "jobs to run")
        # (A producer that first opened the path after the change would make a new queue.)
        wait_until(lambda: Path(f"{out}.ready").exists(), 30, "the producer to enqueue")
        if how == "mv another queue over it":
            os.replace(other, db)
        else:
            os.remove(db)
            if how == "rm all three files":
                os.remove(f"{db}-wal")
                os.remove(f"{db}-shm")
        assert producer.wait(10) == 0
        assert work.wait(15) == 4  # the queue file was deleted or replaced
    finally:
        for proc in (producer, work):
            proc.kill()
            proc.wait()
    refused = json.loads(out.read_text())
    assert refused["kind"] == "StoreMoved" and "deleted or replaced" in refused["error"]
    assert "deleted or replaced" in log.read_text()
    if how == "mv another queue over it":
        assert integrity(db) == "ok"
        moved_in = liteq.SQLiteStore(db)
        assert sorted(m.job.n for m in moved_in.jobs()) == list(range(7))  # type: ignore[union-attr]
        assert moved_in.count(queue="elsewhere") == 7
    else:
        assert not db.exists(), "a process made a new file at the path"


#: A producer that opens the queue, enqueues one job and goes idle (a web app between
#: requests) until `then` appears; then it enqueues again, closes, or waits to be killed.
IDLE_HOLDER = """
import json, pathlib, sys, time, liteq, tests.jobs
db, ready, then = sys.argv[1:4]
store = liteq.SQLiteStore(db)
store.enqueue(tests.jobs.Noop(-1))
pathlib.Path(ready).touch()
while not pathlib.Path(then).exists():
    time.sleep(0.01)
how = pathlib.Path(then).read_text()
if how == "writes":
    try:
        store.enqueue(tests.jobs.Noop(-2))
        said = {"kind": None}
    except liteq.StoreError as exc:
        said = {"kind": type(exc).__name__, "error": str(exc)}
    print(json.dumps(said), flush=True)
elif how == "closes":
    store.close()
else:
    time.sleep(3600)
"""

#: A new process: opens the path and enqueues 100 jobs one by one; prints the ids it was
#: given, or how it was refused.
NEW_PRODUCER = """
import json, sys, liteq, tests.jobs
acked = []
try:
    store = liteq.SQLiteStore(sys.argv[1])
    for n in range(100):
        acked.append(store.enqueue(tests.jobs.Noop(1000 + n)).id)
    said = {"acked": acked}
except liteq.StoreError as exc:
    said = {"acked": acked, "kind": type(exc).__name__, "error": str(exc)}
print(json.dumps(said), flush=True)
"""

REPLACED = "replaced while processes still have the old file open: stop them first"


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def numbers(path: Path) -> list[int]:
    """The `n` of every job (a Noop) in a queue file."""
    store = liteq.SQLiteStore(path, readonly=True)
    try:
        return sorted(m.job.n for m in store.jobs())  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["writes", "closes", "is killed"])
def test_mv_over_a_queue_an_idle_process_holds_loses_no_acknowledged_job(
    tmp_path: Path, then: str
) -> None:
    db, other, old = tmp_path / "q.sqlite", tmp_path / "other.sqlite", tmp_path / "old.sqlite"
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Noop(n) for n in range(50)])
    store.close()
    kept = liteq.SQLiteStore(other)
    kept.enqueue_many([Noop(n) for n in range(100, 107)], queue="elsewhere")
    kept.close()
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = subprocess.Popen(
        [sys.executable, "-c", IDLE_HOLDER, str(db), str(ready), str(go)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(ready.exists, 30, "the holder to open the queue and go idle")
        os.link(db, old)  # (to look at the old file once it is no longer at the path)
        os.replace(other, db)
        said = json.loads(run_python(NEW_PRODUCER, str(db)).stdout)
        acked = said["acked"]
        if "kind" in said:
            assert said["kind"] == "StoreMoved" and REPLACED in said["error"], said
            assert acked == []
        work = run_liteq("work", "--db", str(db), "--import", "tests.jobs", "--burst")
        assert work.returncode == 4, work.stderr
        assert REPLACED in work.stderr

        go.write_text(then)
        if then == "is killed":
            holder.kill()
        printed, _ = holder.communicate(timeout=30)
        if then == "writes":
            assert json.loads(printed)["kind"] == "StoreMoved", printed
    finally:
        holder.kill()
        holder.communicate()
    assert integrity(old) == "ok"
    if then == "is killed":
        # Its log, `q.sqlite-wal`, still holds the old file's last commits: refused alike.
        again = run_liteq("work", "--db", str(db), "--import", "tests.jobs", "--burst")
        assert again.returncode == 4 and "q.sqlite-wal" in again.stderr, again.stderr
        for suffix in ("-wal", "-shm"):  # what the message says to do
            os.remove(f"{db}{suffix}")
    assert integrity(db) == "ok"
    new_jobs = [1000 + n for n in range(len(acked))]
    assert numbers(db) == [*range(100, 107), *new_jobs], "acknowledged jobs are not in the file"
    # With the old file's processes gone, the file at the path is used as it is.
    later = json.loads(run_python(NEW_PRODUCER, str(db)).stdout)
    assert len(later["acked"]) == 100, later
    assert integrity(db) == "ok"
    assert numbers(db) == sorted([*range(100, 107), *new_jobs, *range(1000, 1100)])
    # The old file kept what its processes committed (but for the last commits of the one
    # that was killed, which were in the log).
    in_old = set(range(50)) if then == "is killed" else {-1, *range(50)}
    assert in_old <= set(numbers(old))


@pytest.mark.slow
def test_the_supervisor_never_makes_a_new_file_where_its_queue_was_deleted(
    tmp_path: Path,
) -> None:
    # The worker is busy in a job and notices only when it ends; the supervisor's first
    # check of hung jobs (5 s after it starts) comes before: it must not create the file.
    db, log = tmp_path / "q.sqlite", tmp_path / "work.log"
    store = liteq.SQLiteStore(db)
    job = store.enqueue(Sleeps(6.5))
    work = start_work(db, log)
    try:
        wait_until(lambda: store.get(job.id).status is liteq.Status.RUNNING, 30, "the job to run")
        store.close()
        for suffix in ("", "-wal", "-shm"):
            os.remove(f"{db}{suffix}")
        assert work.wait(30) == 4
    finally:
        work.kill()
        work.wait()
    assert "hung-job check failed: no queue at" in log.read_text()
    assert not db.exists(), "the supervisor made a new file at the path"


def damage_a_page(path: Path) -> None:
    """Overwrite the middle page of a (closed) queue file with bytes no page can hold."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    page_size, pages = (
        conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count")
    )
    conn.close()
    with path.open("r+b") as f:  # (no connection to it is open in this process)
        f.seek(page_size * (pages // 2))
        f.write(b"\xff" * page_size)


@pytest.mark.timeout(120)
def test_a_damaged_page_stops_liteq_work_with_a_clear_message(tmp_path: Path) -> None:
    db, log = tmp_path / "q.sqlite", tmp_path / "work.log"
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Noop("x" * 200) for _ in range(3000)])  # type: ignore[arg-type]
    store.close()
    assert run_liteq("db", "check", "--db", str(db)).returncode == 0
    damage_a_page(db)
    assert integrity(db) != "ok"

    work = start_work(db, log, "--processes", "2", "--burst")
    assert work.wait(60) == 5
    said = log.read_text()
    assert "is not a usable SQLite database" in said and ".recover" in said
    assert said.count(" started (queues") == 2, "a worker was restarted on a damaged file"
    check = run_liteq("db", "check", "--db", str(db))
    assert check.returncode == 1 and "is damaged" in check.stdout


def test_another_applications_database_is_refused_unchanged(tmp_path: Path) -> None:
    app = tmp_path / "app.db"
    conn = sqlite3.connect(app)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ann')")
    conn.commit()
    conn.close()
    before = app.read_bytes()
    with pytest.raises(liteq.StoreError, match="another application's database"):
        liteq.SQLiteStore(app)
    result = run_liteq("work", "--db", str(app), "--import", "tests.jobs", "--burst")
    assert result.returncode == 2
    assert "another application's database" in result.stderr
    assert "Traceback" not in result.stderr
    assert app.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file cannot be written by this user (root ignores permissions: make it immutable)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o600)


def test_a_read_only_queue_file_is_refused_at_start(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    liteq.SQLiteStore(db).enqueue(Noop())
    with read_only(db):
        with pytest.raises(liteq.StoreError, match="is read-only for this process"):
            liteq.SQLiteStore(db)
        result = run_liteq("work", "--db", str(db), "--import", "tests.jobs", timeout=30)
    assert result.returncode == 2
    assert "is read-only for this process" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reader_holding_a_transaction_is_named_when_the_wal_grows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path, wal_warning=512 << 10)
    store.enqueue(Noop())
    reader = apsw.Connection(str(path))  # a report query that takes its time
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM liteq_jobs").fetchall()
    while store.wal_bytes() < 600 << 10:
        store.enqueue_many([Noop(n) for n in range(50)])
    (warning,) = store.check_health()
    assert "-wal has grown to" in warning and "reader that keeps a transaction open" in warning
    assert store.check_health() == []  # said once, then again only if it doubles

    monkeypatch.setattr(liteq.worker.heartbeat, "HEALTH_EVERY", 0.1)
    later = liteq.SQLiteStore(path, wal_warning=512 << 10)
    worker = liteq.Worker(later, jitter=False, wakeup_every=0.1, check_code=False)
    with caplog.at_level("WARNING", logger="liteq.worker"):
        thread = threading.Thread(target=worker.start)
        thread.start()
        wait_until(lambda: "reader that keeps a transaction open" in caplog.text, 10)
        worker.stop()
        thread.join(10)
    reader.execute("COMMIT")
    reader.close()
    later.enqueue(Noop())
    assert later.check_health() == []


def test_a_clock_step_makes_no_live_worker_look_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, trace = tmp_path / "q.sqlite", tmp_path / "q.trace"
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(SlowFirst(str(trace), 4))
    proc = bare_worker(db)
    try:
        wait_until(lambda: store.count(status=liteq.Status.RUNNING) == 1, 20, "the job to start")
        owner = store.get(mjob.id).owner
        # The clocks a wall-clock step moves: the store's, and the boot time psutil derives.
        real_boot = psutil.boot_time()
        for step in (1.0, 45.0, -45.0, 3600.0):
            monkeypatch.setattr(psutil, "boot_time", lambda s=step: real_boot + s)
            assert owner_state(owner) == "alive"
            stepped = liteq.SQLiteStore(db, clock=lambda s=step: time.time() + s)
            assert stepped.detect_hung_jobs() == [], f"a step of {step}s"
            stepped.close()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    runs = runs_by_job(trace)[mjob.id]
    assert len(runs) == 1 and runs[0]["end"] is not None and runs[0]["pid"] == proc.pid


@pytest.mark.timeout(60)
def test_a_paused_and_resumed_tree_keeps_its_healthy_worker(tmp_path: Path) -> None:
    # SIGSTOP of every process, as a paused VM: on resume every lease has lapsed, but each
    # worker renews its own at once, and no one may be killed before it had the chance.
    db, log, trace = tmp_path / "q.sqlite", tmp_path / "work.log", tmp_path / "q.trace"
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(SlowFirst(str(trace), 6))
    work = start_work(db, log, "--processes", "1", "--lease", "2")
    try:
        wait_until(lambda: store.count(status=liteq.Status.RUNNING) == 1, 20, "the job to start")
        (worker,) = children(work.pid)
        for pid in (work.pid, worker):
            os.kill(pid, signal.SIGSTOP)
        time.sleep(4)
        for pid in (work.pid, worker):
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: store.count() == 0, 30, "the job to complete")
        work.send_signal(signal.SIGTERM)
        assert work.wait(30) == 0
    finally:
        work.kill()
        work.wait()
    runs = runs_by_job(trace)[mjob.id]
    assert [(r["pid"], r["end"] is not None) for r in runs] == [(worker, True)]
    said = log.read_text()
    assert "re-queued job" not in said and "failed for good" not in said
