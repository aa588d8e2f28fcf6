"""`liteq work` with real processes and real signals. Every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import liteq
from liteq import Status
from tests.helpers import ROOT, bare_worker, liteq_work, wait_until
from tests.jobs import ExitsOnce, Hog, Noop, SlowFirst, Traced
from tests.traces import assert_runs_never_overlap, runs_by_job


class Work:
    """A running `liteq work` process and its log."""

    def __init__(self, db: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = db.with_suffix(".log")
        self._log = self.log_path.open("w")
        self.proc = liteq_work(
            db,
            "--wakeup-every",
            "0.5",
            *args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def children(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def wait_for_workers(self, n: int) -> list[int]:
        wait_until(lambda: len(self.children()) == n, what=f"{n} workers")
        return self.children()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    def kill_all(self) -> None:
        for pid in [*self.children(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "q.sqlite"
    liteq.SQLiteStore(path).close()
    return path


@pytest.fixture
def work(db: Path) -> Iterator[Callable[..., Work]]:
    started: list[Work] = []

    def start(*args: str, **kwargs: object) -> Work:
        w = Work(db, *args, **kwargs)  # type: ignore[arg-type]
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill_all()


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", ["1", "8"])
def test_sigkilled_workers_lose_no_job_and_never_overlap(
    db: Path, work: Callable[..., Work], prefetch: str
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Traced(str(trace), 0.01) for _ in range(300)])
    w = work("--processes", "3", "--prefetch", prefetch)
    w.wait_for_workers(3)
    killed: dict[int, float] = {}
    rng = random.Random(1234)
    for _ in range(8):
        time.sleep(rng.uniform(0.1, 0.4))
        victims = w.children()
        if not victims or store.count() == 0:
            break
        pid = rng.choice(victims)
        # The time before the kill: the job may be picked up again within milliseconds of
        # the death, sooner than a time taken after os.kill() returns.
        killed[pid] = time.time()
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: store.count() == 0, 90, "every job to complete")
    assert w.stop() == 0
    runs = runs_by_job(trace)
    assert len(runs) == 300
    assert_runs_never_overlap(runs, killed)
    assert "killed by SIGKILL" in w.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT])
def test_term_lets_the_running_job_finish(db: Path, work: Callable[..., Work], signum: int) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    store.enqueue(Traced(str(trace), 1.0))
    w = work("--graceful-timeout", "10")
    wait_until(lambda: store.count(status=Status.RUNNING) == 1, what="the job to start")
    began = time.monotonic()
    w.signal(signum)
    assert w.proc.wait(30) == 0
    assert time.monotonic() - began < 8
    assert store.count() == 0
    assert [r["end"] is not None for r in runs_by_job(trace)[1]] == [True]


def test_term_past_the_graceful_timeout_requeues_with_a_mulligan(
    db: Path, work: Callable[..., Work]
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(SlowFirst(str(trace), 60))
    w = work("--graceful-timeout", "0.5")
    wait_until(lambda: store.count(status=Status.RUNNING) == 1, what="the job to start")
    assert w.stop(timeout=15) == 0
    requeued = store.get(mjob.id)
    assert requeued.status is Status.QUEUED and requeued.max_attempts == 2
    assert "graceful shutdown timeout" in (requeued.error or "")
    assert "re-queued with a mulligan" in w.log()


def test_int_once_finishes_the_job_twice_stops_now(db: Path, work: Callable[..., Work]) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    first = store.enqueue(SlowFirst(str(trace), 1.0))
    w = work()
    wait_until(lambda: store.count(status=Status.RUNNING) == 1, what="the job to start")
    w.signal(signal.SIGINT)
    assert w.proc.wait(15) == 0
    with pytest.raises(liteq.JobNotFound):
        store.get(first.id)  # it finished

    second = store.enqueue(SlowFirst(str(trace), 60))
    w = work()
    wait_until(lambda: store.count(status=Status.RUNNING) == 1, what="the job to start")
    w.signal(signal.SIGINT)
    time.sleep(0.3)
    w.signal(signal.SIGINT)
    assert w.proc.wait(15) == 0
    stopped = store.get(second.id)
    assert stopped.status is Status.QUEUED and "second SIGINT" in (stopped.error or "")


def test_hup_restarts_every_worker_and_loses_no_job(db: Path, work: Callable[..., Work]) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--processes", "2")
    old = set(w.wait_for_workers(2))
    store.enqueue_many([Traced(str(trace), 0.05) for _ in range(40)])
    w.signal(signal.SIGHUP)
    store.enqueue_many([Traced(str(trace), 0.05) for _ in range(40)])
    wait_until(lambda: len(set(w.children()) - old) == 2, what="two new workers")
    wait_until(lambda: store.count() == 0, 60, "every job to complete")
    assert w.stop() == 0
    runs = runs_by_job(trace)
    assert len(runs) == 80 and all(len(r) == 1 and r[0]["end"] for r in runs.values())
    assert "rolling restart" in w.log()


def test_a_worker_over_its_memory_limit_is_replaced(db: Path, work: Callable[..., Work]) -> None:
    store = liteq.SQLiteStore(db)
    store.enqueue(Hog(300), priority=1)
    store.enqueue_many([Noop(i) for i in range(3)])
    w = work("--max-rss", "250M", "--max-crashes", "1")
    # The Hog goes over the limit as it ends: its worker is stopped while it runs (a crash
    # of the job: see tests/test_crashes.py) or, if the job ended first, exits before its
    # next job. Either way it is replaced and the other jobs complete.
    wait_until(lambda: store.count() == store.count(status=Status.FAILED), 60, "the jobs")
    replaced = ("exit 1 (memory limit)", "killed by SIGKILL")
    wait_until(lambda: any(r in w.log() for r in replaced), 10, "a memory restart")
    assert w.stop() == 0


def test_a_code_change_restarts_workers_on_the_new_code(
    db: Path, work: Callable[..., Work], tmp_path: Path
) -> None:
    module = tmp_path / "codever.py"
    module.write_text(CODEVER.format(version=1))
    store = liteq.SQLiteStore(db)
    w = work("--import", "codever", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    w.wait_for_workers(1)
    out = tmp_path / "versions.txt"
    sys.path.insert(0, str(tmp_path))
    try:
        import codever  # type: ignore[import-not-found]

        store.enqueue(codever.Report(str(out)))
        wait_until(lambda: out.exists() and out.read_text() == "1\n", what="version 1 to run")
        module.write_text(CODEVER.format(version=2))
        time.sleep(1.2)  # the check runs at most once a second
        store.enqueue(codever.Report(str(out)))
        wait_until(lambda: out.read_text() == "1\n2\n", what="version 2 to run")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("codever", None)
    assert "exit 2 (code changed)" in w.log()
    assert w.stop() == 0


CODEVER = """
import liteq

VERSION = {version}


class Report(liteq.Job):
    def __init__(self, path):
        self.path = path

    def run(self, job):
        with open(self.path, "a") as f:
            f.write(f"{{VERSION}}\\n")
"""


def test_crash_looping_workers_back_off(db: Path, work: Callable[..., Work]) -> None:
    count = db.with_suffix(".imports")
    w = work("--import", "tests.crashing", "--processes", "2", env={"CRASHING_COUNT": str(count)})
    time.sleep(4)
    log = w.log()
    assert "this module is broken on purpose" in log and "workers cannot start" in log
    assert "next try in 0.5s" in log and "next try in 1.0s" in log
    assert len(count.read_text()) < 20  # backed off, not spinning
    assert w.stop() == 0


@pytest.mark.parametrize(
    ("how", "death"), [("exit", "exit 9 (crashed)"), ("segfault", "killed by SIGSEGV")]
)
def test_a_worker_that_dies_mid_job_has_its_job_requeued_at_once(
    db: Path, work: Callable[..., Work], how: str, death: str
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(ExitsOnce(str(trace), how))
    w = work()
    wait_until(lambda: store.count() == 0, 20, "the job to complete on its second run")
    runs = runs_by_job(trace)[mjob.id]
    assert [r["end"] is None for r in runs] == [True, False]
    assert runs[1]["start"] - runs[0]["start"] < 5  # not after a 30 s lease: at once  # type: ignore[operator]
    assert death in w.log() and "re-queued job" in w.log()
    assert w.stop() == 0


def test_a_job_past_max_runtime_is_interrupted_and_rerun(
    db: Path, work: Callable[..., Work]
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(SlowFirst(str(trace), 60), max_runtime=0.5)
    w = work()
    wait_until(lambda: store.count() == 0, 20, "the job to complete on its second run")
    assert len(runs_by_job(trace)[mjob.id]) == 2
    assert "max_runtime" in w.log()
    assert w.stop() == 0


def test_a_running_job_that_is_no_longer_its_workers_is_stopped(
    db: Path, work: Callable[..., Work]
) -> None:
    # Its lease is gone (deleted here; rescued elsewhere, on another host, say): it must not
    # run on as though it were still this worker's.
    from tests.jobs import Stoppable

    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(Stoppable(str(trace), 60))
    w = work("--lease", "3")
    wait_until(trace.exists, 20, "the job to start")
    store.delete(mjob.id)
    deleted = time.time()
    wait_until(lambda: "stopped" in trace.read_text(), 10, "the job to be stopped")
    assert time.time() - deleted < 3  # at its next renewal, a second after at most
    wait_until(lambda: "lease lost" in w.log(), 10, "the log to say why")
    assert w.stop() == 0


def test_detect_hung_jobs_kills_a_live_worker_past_max_runtime(db: Path) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(SlowFirst(str(trace), 60), max_runtime=0.5)
    proc = bare_worker(db, handle_signals=False)
    try:
        wait_until(lambda: store.count(status=Status.RUNNING) == 1, what="the job to start")
        time.sleep(0.7)
        (rescued,) = store.detect_hung_jobs()
        assert rescued.id == mjob.id and rescued.status is Status.QUEUED
        assert "max_runtime" in (rescued.error or "") and "was killed" in (rescued.error or "")
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_nice_lowers_the_workers_priority(db: Path, work: Callable[..., Work]) -> None:
    from tests.jobs import Niceness

    out = db.with_suffix(".nice")
    liteq.SQLiteStore(db).enqueue(Niceness(str(out)))
    w = work("--nice", "5", "--burst")
    assert w.proc.wait(30) == 0
    assert int(out.read_text()) == os.nice(0) + 5


def test_liteq_url_and_bad_arguments(db: Path, tmp_path: Path) -> None:
    store = liteq.SQLiteStore(db)
    store.enqueue(Noop())
    env = {**os.environ, "LITEQ_URL": f"sqlite:///{db}"}
    done = subprocess.run(
        [sys.executable, "-m", "liteq", "work", "--burst", "--import", "tests.jobs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert store.count() == 0
    work_cmd = [sys.executable, "-m", "liteq", "work", "--import", "tests.jobs"]
    for args, words in [
        (["--processes", "0"], "a whole number of at least 1"),
        (["--max-rss", "lots"], "expected a size"),
        (["--db", "redis://x"], "unsupported store URL"),
    ]:
        bad = subprocess.run(
            [*work_cmd, "--db", str(db), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr


def test_the_supervisor_kills_a_worker_it_cannot_interrupt_and_replaces_it(
    db: Path, work: Callable[..., Work]
) -> None:
    # Regression: the hung-job check used to reap the killed child itself, so the
    # supervisor never saw it die and never started a replacement.
    from tests.jobs import Unstoppable

    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(Unstoppable(str(trace), 60), max_runtime=0.5)
    w = work()
    first = w.wait_for_workers(1)
    wait_until(lambda: store.count() == 0, 30, "the job to complete in a new worker")
    assert len(runs_by_job(trace)[mjob.id]) == 2
    assert "max_runtime=0.5s; its worker" in w.log() and "killed by SIGKILL" in w.log()
    assert w.wait_for_workers(1) != first
    assert w.stop() == 0


def test_term_during_start_up_is_never_lost(db: Path) -> None:
    # Found by the concurrency soak: a TERM forwarded to a worker between fork() and its
    # handler reset was swallowed, and `liteq work` waited for that worker forever.
    rng = random.Random(7)
    for _ in range(10):
        proc = liteq_work(db, "-n", "4", "-q")
        time.sleep(rng.uniform(0.15, 0.45))  # while it forks its workers
        proc.send_signal(signal.SIGTERM)
        try:
            # 0 once supervising; killed by the TERM itself if it came before the handlers.
            assert proc.wait(15) in (0, -signal.SIGTERM)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wait_until(lambda: not workers_on(db), 10, "no worker left behind")


def workers_on(db: Path) -> list[int]:
    """Live processes (not zombies) of `liteq work` on this file."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if str(db) in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def test_prefetched_jobs_count_max_runtime_from_their_real_start(
    db: Path, work: Callable[..., Work]
) -> None:
    # A job waiting in a prefetched batch must not look overdue to the hung-job check: six
    # 1 s jobs with max_runtime 2.5 s in one batch outlast the supervisor's 5 s check.
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Traced(str(trace), 1.0) for _ in range(6)], max_runtime=2.5)
    w = work("--prefetch", "6")
    wait_until(lambda: store.count() == 0, 40, "every job to complete")
    runs = runs_by_job(trace)
    assert len(runs) == 6 and all(len(r) == 1 for r in runs.values()), runs
    assert "killed" not in w.log() and "hung" not in w.log()
    assert w.stop() == 0


def test_a_paused_worker_is_killed_before_its_expired_job_is_requeued(db: Path) -> None:
    # A live worker on this host whose lease lapsed (SIGSTOP, a debugger, a VM pause) would
    # go on running its job when resumed: it must be stopped before anyone else gets the job.
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjob = store.enqueue(SlowFirst(str(trace), 60))
    proc = bare_worker(db, lease=1.0)
    try:
        wait_until(lambda: store.count(status=Status.RUNNING) == 1, what="the job to start")
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        (rescued,) = store.detect_hung_jobs()
        assert rescued.id == mjob.id and rescued.status is Status.QUEUED
        assert "lease expired" in (rescued.error or "") and "was killed" in (rescued.error or "")
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_workers_still_importing_when_the_supervisor_is_killed_exit_soon(
    db: Path, work: Callable[..., Work], tmp_path: Path
) -> None:
    # The supervisor is SIGKILLed while its workers import a slow module: each must notice
    # once it has imported, and exit. (A stop asked before Worker.start() was reset there:
    # they lived on forever under ppid 1.)
    (tmp_path / "slowmod.py").write_text("import time\n\ntime.sleep(2)\n")
    w = work(
        "--import",
        "slowmod",
        "--processes",
        "2",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    # (`liteq work` first imports the modules once in a subprocess of its own, for 2 s.)
    wait_until(lambda: len(forked_workers(w)) == 2, 30, "both workers forked")
    workers = forked_workers(w)
    try:
        time.sleep(0.5)  # each is still in `import slowmod`
        assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
        os.kill(w.proc.pid, signal.SIGKILL)
        assert w.proc.wait(10) == -signal.SIGKILL
        killed = time.monotonic()
        # 1.5 s more of import, then at most a second or two to notice and stop.
        wait_until(lambda: not any(map(alive, workers)), 8, "both workers to exit")
        assert time.monotonic() - killed < 8
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def forked_workers(w: Work) -> list[int]:
    """The supervisor's children that it forked (its workers, not the import check it runs
    first with `python -c`)."""
    try:
        supervisor = psutil.Process(w.proc.pid)
        mine = supervisor.cmdline()
        found = []
        for kid in supervisor.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if kid.cmdline() == mine:
                    found.append(kid.pid)
        return found
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie no reaper has collected yet does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_burst_plain_jobs_at_concurrency_spread_over_every_process(
    db: Path, work: Callable[..., Work]
) -> None:
    # At --concurrency > 1 a worker claims as many jobs as it has free slots; plain jobs
    # it would run one by one, so it keeps one and hands the others back for the other
    # processes. (One process used to claim all 8 and run them in turn, 4 s, while the
    # other found nothing and exited.)
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjobs = store.enqueue_many([Traced(str(trace), 0.5) for _ in range(8)])
    w = work("--processes", "2", "--concurrency", "10", "--burst")
    assert w.proc.wait(30) == 0, w.log()
    assert store.count() == 0
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(m.id for m in mjobs)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs
    by_pid: dict[int, int] = {}
    for (run,) in runs.values():
        by_pid[int(run["pid"])] = by_pid.get(int(run["pid"]), 0) + 1  # type: ignore[call-overload]
    assert len(by_pid) == 2, by_pid  # each process ran some
    first = min(float(r[0]["start"]) for r in runs.values())  # type: ignore[arg-type]
    last = max(float(r[0]["end"]) for r in runs.values())  # type: ignore[arg-type]
    assert last - first < 3.0, f"8 jobs of 0.5 s took {last - first:.2f}s on 2 processes"


def test_burst_with_max_jobs_goes_on_until_the_queue_is_drained(
    db: Path, work: Callable[..., Work]
) -> None:
    # A worker that stops at --max-jobs with jobs still due has not drained the queue: a
    # new one goes on. (`liteq work --burst` used to exit 0 after 10, with 20 still queued.)
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    mjobs = store.enqueue_many([Traced(str(trace)) for _ in range(30)])
    w = work("--burst", "--max-jobs", "10", "--processes", "1")
    assert w.proc.wait(30) == 0, w.log()
    assert store.count() == 0, f"{store.count()} jobs left queued"
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(m.id for m in mjobs)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values())
    assert len({int(r[0]["pid"]) for r in runs.values()}) == 3  # type: ignore[call-overload]
