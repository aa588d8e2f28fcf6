"""Coroutine jobs in real `liteq work` processes (`--concurrency N`), on SQLite and
PostgreSQL: throughput, SIGKILL, max_runtime, a loop blocked past the lease, TERM, HUP and
what `liteq status` shows. Real processes, real signals, real files; every wait is bounded.

The job classes below are imported by the workers (`--import tests.test_coroutine_workers`).
Each writes a trace line as it starts and ends (tests/traces.py reads them); a cancelled run
writes its `finally` to a second file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import liteq
from liteq import Status
from tests import pg
from tests.helpers import ROOT, liteq_work, wait_until
from tests.jobs import trace
from tests.traces import assert_runs_never_overlap, runs_by_job


class CoSleeps(liteq.Job):
    """Awaits `seconds` (on its first attempt only, with `first_only`); records its start,
    its end, and (in `finals`) each run's `finally` and whether it was cancelled there."""

    def __init__(
        self, path: str, seconds: float, finals: str = "", first_only: bool = False
    ) -> None:
        self.path = path
        self.seconds = seconds
        self.finals = finals
        self.first_only = first_only

    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        trace(self.path, job.id, "start", job.attempts)
        cancelled = False
        try:
            if job.attempts == 1 or not self.first_only:
                await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if self.finals:
                trace(self.finals, job.id, "cancelled" if cancelled else "done", job.attempts)
        trace(self.path, job.id, "end", job.attempts)


class CoBlocks(liteq.Job):
    """Blocks its loop with time.sleep (the mistake a coroutine job can make)."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds

    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        trace(self.path, job.id, "start", job.attempts)
        time.sleep(self.seconds)
        trace(self.path, job.id, "end", job.attempts)


class CoKillsItsWorker(liteq.Job):
    """Awaits `seconds`, then takes its whole worker down (os._exit(139), as a segfault in
    a C extension would): on every attempt. Records each run's start and the moment it
    kills (in `deaths`, with the pid it kills)."""

    def __init__(self, path: str, deaths: str, seconds: float) -> None:
        self.path = path
        self.deaths = deaths
        self.seconds = seconds

    async def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        await asyncio.sleep(self.seconds)
        trace(self.deaths, job.id, "kill", job.attempts)
        os._exit(139)


# -- processes -------------------------------------------------------------------------


class Work:
    """A running `liteq work` (with this module's job classes) and its log."""

    def __init__(self, db: str, log: Path, *args: str) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = liteq_work(
            db,
            "--import",
            "tests.test_coroutine_workers",
            "--wakeup-every",
            "0.5",
            *args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def children(self) -> list[int]:
        """Its live workers (not the zombies it has yet to reap)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        live = []
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if kid.status() != psutil.STATUS_ZOMBIE:
                    live.append(kid.pid)
        return live

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL it and its workers (a test's clean-up, or the kill under test)."""
        for pid in [*self.children(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def new_queue(kind: str, directory: Path) -> Iterator[str]:
    """A new queue's URL: an SQLite file in `directory`, or a schema of the test server's."""
    if kind == "sqlite":
        path = directory / "q.sqlite"
        liteq.SQLiteStore(path).close()
        yield str(path)
        return
    schema = pg.new_schema()
    try:
        yield pg.url(schema)
    finally:
        pg.drop_schema(schema)


#: For a test of the worker's own part, on SQLite alone (the store's part, SIGKILL with
#: coroutines in flight, runs on both): the suite stays within its time.
SQLITE_ONLY = pytest.mark.parametrize("queue", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with new_queue(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def work(queue: str, tmp_path: Path) -> Iterator[list[Work]]:
    started: list[Work] = []
    yield started
    for w in started:
        w.kill()


def start(started: list[Work], db: str, log: Path, *args: str) -> Work:
    w = Work(db, log, *args)
    started.append(w)
    return w


def starts(path: Path) -> int:
    """How many runs have started, by the trace."""
    if not path.exists():
        return 0
    return sum('"start"' in line for line in path.read_text().splitlines())


def peak_in_flight(path: Path) -> int:
    """The most runs in flight at once, by the trace's start and end times."""
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        events.append((event["t"], 1 if event["event"] == "start" else -1))
    now = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # (ends first at a tie)
        now += step
        peak = max(peak, now)
    return peak


def finals_of(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- throughput ---------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(90)
def test_500_jobs_awaiting_a_tenth_of_a_second_finish_in_about_a_second_with_concurrency_50(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path = tmp_path / "q.trace"
    store = liteq.connect(queue)
    w = start(work, queue, tmp_path / "work.log", "--concurrency", "50")
    wait_until(lambda: len(store.workers()) == 1, 30, "the worker to register")
    store.enqueue_many([CoSleeps(str(path), 0.1) for _ in range(500)])
    enqueued = time.time()
    wait_until(lambda: store.count() == 0, 60, "every job to complete")
    runs = runs_by_job(path)
    assert len(runs) == 500
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values())
    last_end = max(float(r[0]["end"]) for r in runs.values())  # type: ignore[arg-type]
    took = last_end - enqueued
    # Ideal: 10 rounds of 0.1 s = 1 s. Serially it would be 50 s.
    assert took < 6, f"500 jobs took {took:.2f}s with --concurrency 50"
    peak = peak_in_flight(path)
    assert 25 <= peak <= 50, peak
    assert w.stop() == 0
    store.close()


# -- SIGKILL --------------------------------------------------------------------------------


@pytest.mark.timeout(150)
# (PostgreSQL's in the soak run, `pytest -m soak`: its claims and leases are held under
# SIGKILL by test_concurrency by default.)
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.soak)])
# (One example a store by default; the soak profile, LITEQ_HYPOTHESIS_PROFILE=soak, more.)
@settings(
    max_examples=max(1, settings.default.max_examples // 60),
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
)
@given(delay=st.floats(0.0, 0.4), group=st.booleans())
def test_sigkill_with_50_coroutines_in_flight_loses_none_and_runs_none_twice_at_once(
    kind: str, delay: float, group: bool
) -> None:
    # `group`: the supervisor and its worker die together, and a new
    # `liteq work` recovers; else only the worker dies and its supervisor recovers.
    with tempfile.TemporaryDirectory() as tmp, new_queue(kind, Path(tmp)) as queue:
        path = Path(tmp) / "q.trace"
        store = liteq.connect(queue)
        mjobs = store.enqueue_many([CoSleeps(str(path), 0.5) for _ in range(120)])
        started: list[Work] = []
        try:
            w = start(started, queue, Path(tmp) / "a.log", "--concurrency", "50")
            wait_until(lambda: starts(path) >= 50, 30, "50 jobs in flight")
            time.sleep(delay)
            (worker,) = w.children()
            killed = {worker: time.time()}  # (before: a job may run again within ms)
            if group:
                # (Each worker is in a process group of its own: both are named.)
                os.kill(w.proc.pid, signal.SIGKILL)
                os.kill(worker, signal.SIGKILL)
                w.proc.wait(10)
                wait_until(lambda: not psutil.pid_exists(worker), 10, "the worker to die")
                start(started, queue, Path(tmp) / "b.log", "--concurrency", "50")
            else:
                os.kill(worker, signal.SIGKILL)
            wait_until(lambda: store.count() == 0, 60, "every job to complete")
            assert started[-1].stop() == 0
        finally:
            for w in started:
                w.kill()
        runs = runs_by_job(path)
        assert sorted(runs) == sorted(m.id for m in mjobs), "a job was lost"
        cut = [r for job_runs in runs.values() for r in job_runs if r["end"] is None]
        assert_runs_never_overlap(runs, killed)
        assert len(cut) >= 10, f"the kill met only {len(cut)} jobs in flight"
        store.close()


# -- max_runtime --------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(60)
def test_max_runtime_cancels_a_stuck_coroutine_and_leaves_the_others_alone(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path, finals = tmp_path / "q.trace", tmp_path / "q.finals"
    store = liteq.connect(queue)
    stuck = store.enqueue(
        CoSleeps(str(path), 3600, str(finals), first_only=True), max_runtime=0.5, priority=1
    )
    others = store.enqueue_many([CoSleeps(str(path), 1.5, str(finals)) for _ in range(9)])
    w = start(work, queue, tmp_path / "work.log", "--concurrency", "10")
    wait_until(lambda: store.count() == 0, 30, "every job to complete")
    assert w.stop() == 0
    runs = runs_by_job(path)
    first, second = runs[stuck.id]
    assert first["end"] is None and second["end"] is not None
    (cancelled,) = [f for f in finals_of(finals) if f["event"] == "cancelled"]
    assert (cancelled["id"], cancelled["attempt"]) == (stuck.id, 1)  # its finally ran
    assert float(first["start"]) + 0.45 < float(cancelled["t"]) < float(second["start"])  # type: ignore[arg-type]
    # The others ran once each, to their end, while it was cancelled beside them.
    for m in others:
        (run,) = runs[m.id]
        assert run["end"] is not None and float(run["end"]) - float(run["start"]) >= 1.45  # type: ignore[arg-type]
    assert "max_runtime" in w.log()


# -- a blocked loop ----------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(90)
def test_a_loop_blocked_past_the_lease_keeps_its_jobs_from_another_worker(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path = tmp_path / "q.trace"
    store = liteq.connect(queue)
    blocker = store.enqueue(CoBlocks(str(path), 5.0), priority=1)
    others = store.enqueue_many([CoSleeps(str(path), 1.0) for _ in range(9)])
    a = start(work, queue, tmp_path / "a.log", "--concurrency", "10", "--lease", "3")
    wait_until(lambda: store.count(status=Status.RUNNING) == 10, 30, "A to claim every job")
    (a_worker,) = a.children()
    b = start(work, queue, tmp_path / "b.log", "--concurrency", "10", "--lease", "3")
    wait_until(lambda: store.count() == 0, 40, "every job to complete")
    assert a.stop() == 0 and b.stop() == 0
    runs = runs_by_job(path)
    (a_pid,) = {int(r[0]["pid"]) for r in runs.values()}  # type: ignore[call-overload]
    assert sorted(runs) == sorted([blocker.id, *(m.id for m in others)])
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs
    assert a_pid == a_worker  # B, though idle and asking, took none of them
    assert "lease lost" not in a.log()


# -- TERM ------------------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(60)
def test_term_lets_coroutines_in_flight_finish_within_the_graceful_timeout(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path = tmp_path / "q.trace"
    store = liteq.connect(queue)
    mjobs = store.enqueue_many([CoSleeps(str(path), 1.0) for _ in range(20)])
    w = start(work, queue, tmp_path / "work.log", "--concurrency", "20", "--graceful-timeout", "10")
    wait_until(lambda: starts(path) == 20, 30, "20 jobs in flight")
    began = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert time.monotonic() - began < 8
    assert store.count() == 0
    runs = runs_by_job(path)
    assert sorted(runs) == sorted(m.id for m in mjobs)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values())


@SQLITE_ONLY
@pytest.mark.timeout(60)
def test_term_past_the_graceful_timeout_cancels_coroutines_and_requeues_them_as_mulligans(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path, finals = tmp_path / "q.trace", tmp_path / "q.finals"
    store = liteq.connect(queue)
    mjobs = store.enqueue_many(
        [CoSleeps(str(path), 60, str(finals), first_only=True) for _ in range(20)],
        max_attempts=1,
    )
    w = start(work, queue, tmp_path / "a.log", "--concurrency", "20", "--graceful-timeout", "0.5")
    wait_until(lambda: starts(path) == 20, 30, "20 jobs in flight")
    began = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(15) == 0
    assert time.monotonic() - began < 5  # cancelled, not waited out (nor a hard exit)
    for m in mjobs:
        again = store.get(m.id)
        assert again.status is Status.QUEUED, (again.status, again.error)
        assert again.max_attempts == 2  # a mulligan: the attempt is given back
        assert "graceful shutdown timeout" in (again.error or "")
    cancelled = [f for f in finals_of(finals) if f["event"] == "cancelled"]
    assert sorted(int(f["id"]) for f in cancelled) == sorted(m.id for m in mjobs)  # type: ignore[call-overload]
    assert "re-queued with a mulligan" in w.log()

    w = start(work, queue, tmp_path / "b.log", "--concurrency", "20")
    wait_until(lambda: store.count() == 0, 30, "every job to complete on a new worker")
    assert w.stop() == 0
    runs = runs_by_job(path)
    by_id = {int(f["id"]): float(f["t"]) for f in cancelled}  # type: ignore[call-overload, arg-type]
    for m in mjobs:
        first, second = runs[m.id]
        assert first["end"] is None and second["end"] is not None
        assert by_id[m.id] < float(second["start"])  # type: ignore[arg-type]


# -- HUP ------------------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(90)
def test_hup_rolls_over_with_coroutines_in_flight_and_loses_none(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path = tmp_path / "q.trace"
    store = liteq.connect(queue)
    w = start(work, queue, tmp_path / "work.log", "--processes", "2", "--concurrency", "20")
    wait_until(lambda: len(store.workers()) == 2, 30, "two registered workers")
    old = set(w.children())
    mjobs = store.enqueue_many([CoSleeps(str(path), 0.5) for _ in range(100)])
    wait_until(lambda: starts(path) >= 30, 30, "jobs in flight")
    w.proc.send_signal(signal.SIGHUP)
    mjobs += store.enqueue_many([CoSleeps(str(path), 0.5) for _ in range(100)])
    wait_until(lambda: len(set(w.children()) - old) == 2, 30, "two new workers")
    wait_until(lambda: store.count() == 0, 60, "every job to complete")
    assert w.stop() == 0
    runs = runs_by_job(path)
    assert sorted(runs) == sorted(m.id for m in mjobs)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values())
    pids = {int(r[0]["pid"]) for r in runs.values()}  # type: ignore[call-overload]
    assert pids & old and pids - old  # both old and new workers ran some
    assert "rolling restart" in w.log()


# -- what an operator sees -----------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(60)
def test_status_shows_how_many_coroutines_each_worker_has_in_flight(
    queue: str, tmp_path: Path, work: list[Work]
) -> None:
    path = tmp_path / "q.trace"
    store = liteq.connect(queue)
    store.enqueue_many([CoSleeps(str(path), 2.5) for _ in range(20)])
    w = start(work, queue, tmp_path / "work.log", "--concurrency", "50", "--lease", "3")
    wait_until(lambda: starts(path) == 20, 30, "20 jobs in flight")
    # A beat every lease/3 = 1 s tells the registry.
    wait_until(lambda: [i.in_flight for i in store.workers()] == [20], 10, "a beat with 20")
    done = subprocess.run(
        [sys.executable, "-m", "liteq", "status", "--json", "--db", queue],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (shown,) = json.loads(done.stdout)["workers"]
    assert shown["in_flight"] == 20
    assert shown["pid"] == w.children()[0]
    assert w.stop() == 0


# -- a job that kills its worker among others ------------------------------------------------


@SQLITE_ONLY
@pytest.mark.timeout(60)
# (--max-crashes 1: the shared deaths are never the last, the poison's own is.)
@pytest.mark.parametrize(("max_crashes", "deaths_to_fail"), [(1, 3)])
def test_a_coroutine_job_that_kills_its_worker_fails_alone_and_the_innocent_jobs_run_once(
    queue: str, tmp_path: Path, work: list[Work], max_crashes: int, deaths_to_fail: int
) -> None:
    # A poison job kills its worker with 10 innocent coroutine jobs in flight. Each job in
    # flight at a death counts a crash (never its last), and a job in flight at two deaths
    # then runs alone: the poison fails for good at its own death, and each innocent job
    # completes once, never beside another run of itself. (It used to be that no job was
    # blamed for a death with several in flight: all were re-queued with a mulligan, and
    # the poison took every innocent job down with it, over and over, until every job
    # ended FAILED.) The innocent jobs await 0.8 s, not 3: in flight at the 0.5 s deaths
    # all the same, and run alone one by one afterwards within the test's time.
    path, deaths = tmp_path / "q.trace", tmp_path / "q.deaths"
    store = liteq.connect(queue)
    poison = store.enqueue(CoKillsItsWorker(str(path), str(deaths), 0.5), priority=1)
    innocents = store.enqueue_many([CoSleeps(str(path), 0.8) for _ in range(10)])
    w = start(
        work,
        queue,
        tmp_path / "work.log",
        "--concurrency",
        "50",
        "--processes",
        "1",
        "--max-crashes",
        str(max_crashes),
    )
    wait_until(lambda: starts(path) >= 11, 30, "the 11 jobs in flight")

    def settled() -> bool:
        if len(finals_of(deaths)) > deaths_to_fail:  # past --max-crashes: it will not settle
            return True
        return store.get(poison.id).status is Status.FAILED and store.count() == 1

    wait_until(settled, 40, "the poison to fail and every innocent job to complete")
    # The first two deaths were shared (a crash counted, never the last: then each runs
    # alone); the third the poison's own.
    assert len(finals_of(deaths)) == deaths_to_fail, "the poison's deaths"
    assert store.count() == 1, [(m.id, m.status, m.error) for m in store.jobs()]
    assert w.stop() == 0
    failed = store.get(poison.id)
    assert failed.record.crashes == deaths_to_fail, failed.record
    kills = finals_of(deaths)
    assert [k["id"] for k in kills] == [poison.id] * deaths_to_fail
    killed = {int(k["pid"]): float(k["t"]) for k in kills}  # type: ignore[call-overload, arg-type]
    assert len(killed) == deaths_to_fail  # a worker process per death
    runs = runs_by_job(path)
    assert len(runs[poison.id]) == deaths_to_fail
    assert all(r["end"] is None for r in runs[poison.id])
    # The first death met the innocent jobs in flight (each then runs again).
    first_pid = int(runs[poison.id][0]["pid"])  # type: ignore[call-overload]
    met = [m for m in innocents if runs[m.id][0]["pid"] == first_pid]
    assert len(met) == 10, [runs[m.id] for m in innocents]
    for m in innocents:
        ended = [r for r in runs[m.id] if r["end"] is not None]
        assert len(ended) == 1, (m.id, runs[m.id])  # completed exactly once
        with pytest.raises(liteq.JobNotFound):
            store.get(m.id)  # completed (and deleted)
    assert_runs_never_overlap({m.id: runs[m.id] for m in innocents}, killed)
    # The last death was the poison's alone: nothing else was in flight beside it.
    for run in runs[poison.id][2:]:
        pid, began = run["pid"], float(run["start"])  # type: ignore[arg-type]
        beside = [
            r
            for m in innocents
            for r in runs[m.id]
            if r["pid"] == pid and (r["end"] is None or float(r["end"]) > began)  # type: ignore[arg-type]
        ]
        assert beside == [], beside
    store.close()
