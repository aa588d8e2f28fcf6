"""A worker left to size its own claims (prefetch=None, `--prefetch auto`): a deep queue of short
jobs is claimed in batches, slow jobs one at a time, and a worker killed holding a batch
loses none of it and runs none of it twice at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import liteq
from liteq.status import Status
from liteq.worker.loop import HELD_FRESH
from liteq.worker.sizing import BUDGET, MOST, ClaimSize
from tests import pg
from tests.conftest import StoreFactory
from tests.helpers import ROOT, wait_until
from tests.jobs import ExitsOnce, Noop, Sleeps, StopsItself, Traced
from tests.traces import assert_runs_never_overlap, runs_by_job

#: The store the jobs below look at (the test's own, in this process).
WATCHED: list[liteq.stores.BaseStore] = []
#: How many jobs were RUNNING as each Held job ran, in order.
SEEN: list[int] = []


class Held(liteq.Job):
    """Notes how many jobs are RUNNING as it runs (its worker's batch, held), then sleeps."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        SEEN.append(WATCHED[0].count(status=Status.RUNNING))
        time.sleep(self.seconds)


@pytest.fixture
def watched(make_store: StoreFactory) -> Iterator[liteq.stores.BaseStore]:
    store = make_store()
    WATCHED[:] = [store]
    SEEN.clear()
    yield store
    WATCHED.clear()


def drain(store: liteq.stores.BaseStore) -> liteq.Worker:
    worker = liteq.Worker(
        store, exit_if_no_jobs=True, jitter=False, handle_signals=False, prefetch=None
    )
    assert worker.start() == 0
    return worker


def test_a_deep_queue_of_short_jobs_is_claimed_in_batches(
    watched: liteq.stores.BaseStore,
) -> None:
    watched.enqueue_many([Held() for _ in range(400)])
    worker = drain(watched)
    assert worker.jobs_processed == 400
    assert watched.count(status=Status.QUEUED) == watched.count(status=Status.RUNNING) == 0
    # One claim per job would hold one at a time; batches grow to the most allowed.
    assert max(SEEN) > 10, SEEN
    assert max(SEEN) <= MOST


def test_slow_jobs_are_claimed_one_at_a_time(watched: liteq.stores.BaseStore) -> None:
    # Short jobs first (batches), then slow ones: once a slow one has run, its worker holds
    # no job it cannot start within the budget.
    watched.enqueue_many([Held() for _ in range(100)])
    watched.enqueue_many([Held(BUDGET) for _ in range(8)], priority=-1)
    drain(watched)
    short, slow = SEEN[:100], SEEN[100:]
    assert max(short) > 1, short
    assert slow[1:] == [1] * 7, slow


def test_a_shallow_queue_is_claimed_one_job_at_a_time() -> None:
    size = ClaimSize()
    size.ran(0.0001)  # short jobs: a batch of many would fit the budget
    assert size.next() == 1  # but nothing says the queue is deep yet
    size.claimed(1, 1)
    size.claimed(2, 2)
    assert size.next() == 4
    size.claimed(4, 3)  # the queue ran out: other workers get what comes next
    assert size.next() == 1
    size.claimed(1, 1)
    size.claimed(2, 2, timed=True)  # jobs with max_runtime: each start is a write anyway
    assert size.next() == 1
    size.claimed(1, 1)
    assert size.ran(BUDGET)  # one slow job: one at a time again, the held ones handed back
    assert size.next() == 1


# -- a worker killed holding a batch ------------------------------------------------------
def bare_worker(url: str, lease: float) -> subprocess.Popen[bytes]:
    """A Worker sizing its claims in a process of its own, with no supervisor to see it die."""
    code = (
        "import liteq, sys, tests.jobs; liteq.Worker(liteq.connect(sys.argv[1]), prefetch=None,"
        f" jitter=False, exit_if_no_jobs=True, lease={lease!r}).start()"
    )
    return subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "q.sqlite")
        return
    pg.dsn_or_skip()
    schema = pg.new_schema()
    yield pg.url(schema)
    pg.drop_schema(schema)


@pytest.mark.timeout(60)
def test_a_worker_killed_holding_a_batch_loses_no_job_and_runs_none_twice_at_once(
    url: str, tmp_path: Path
) -> None:
    trace = tmp_path / "q.trace"
    store = liteq.connect(url)
    jobs = store.enqueue_many([Traced(str(trace), 0.001) for _ in range(600)])
    work = bare_worker(url, lease=2.0)
    try:
        wait_until(lambda: store.count(status=Status.RUNNING) > 5, 20, "a batch held")
    finally:
        os.kill(work.pid, signal.SIGKILL)
        killed_at = time.time()
        work.wait(10)
    held = list(store.jobs(status=Status.RUNNING))
    assert len(held) > 5
    # Its jobs come back (its process is gone: at once here, after their lease elsewhere).
    wait_until(lambda: (store.detect_hung_jobs(), not store.count(status=Status.RUNNING))[1], 20)
    back = [store.get(m.id) for m in held]
    assert {(m.status, m.record.crashes) for m in back} == {(Status.QUEUED, 0)}  # none blamed
    drain(store)
    assert store.count(status=Status.QUEUED) == 0 and store.count(status=Status.RUNNING) == 0
    runs = runs_by_job(trace)
    assert sorted(runs) == [m.id for m in jobs]  # every job ran
    assert_runs_never_overlap(runs, {work.pid: killed_at})
    for mjob in held:  # a held job that had not started ran once, after the kill
        if all(run["pid"] != work.pid for run in runs[mjob.id]):
            assert len(runs[mjob.id]) == 1
    store.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("prefetch", [10, None], ids=["prefetch 10", "auto"])
def test_a_worker_paused_past_its_lease_runs_none_of_its_batch_rescued_elsewhere(
    url: str, tmp_path: Path, prefetch: int | None
) -> None:
    # A worker on one host holds a batch and stops (SIGSTOP) between two of its jobs; one
    # on another host (so that nothing kills the first) rescues the batch once its leases
    # run out, and runs it. Resumed, the first renews, finds the leases gone, and must run
    # none of those jobs: each ran once, never two at once.
    trace = tmp_path / "q.trace"
    store = liteq.connect(url)
    # (Short jobs first: a worker sizing its claims learns from them to claim batches.)
    jobs = store.enqueue_many([Traced(str(trace), 0.001) for _ in range(300)])
    store.enqueue(StopsItself())
    jobs += store.enqueue_many([Traced(str(trace), 0.01) for _ in range(40)])
    code = (
        "import liteq, sys, tests.jobs; liteq.Worker(liteq.connect(sys.argv[1]), jitter=False,"
        f" exit_if_no_jobs=False, lease=2.0, prefetch={prefetch!r}).start()"
    )
    env = {**os.environ, "LITEQ_HOST": "host-a"}
    paused = subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, env=env)
    rescuer = None
    try:
        wait_until(lambda: _stopped(paused.pid), 30, "the first worker to stop itself")
        stopped = time.time()
        held = store.count(status=Status.RUNNING)
        assert held > 1  # (the stopper, and jobs of its batch)
        env = {**os.environ, "LITEQ_HOST": "host-b"}
        work = ["work", "--db", url, "--import", "tests.jobs", "--lease", "2", "--processes", "1"]
        rescuer = subprocess.Popen(
            [sys.executable, "-m", "liteq", *work, "--no-jitter"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        done = {m.id for m in jobs}
        wait_until(lambda: set(runs_by_job(trace)) == done, 40, "the rescuer to run them all")
        resumed = time.time()
        os.kill(paused.pid, signal.SIGCONT)
        time.sleep(3.0)  # (its heartbeat renews, its loop goes on to the held jobs)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        paused.terminate()
        paused.wait(20)
        if rescuer is not None:
            rescuer.terminate()
            rescuer.wait(20)
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(done)
    # Jobs it had run before it stopped may run again (their acknowledgement was waiting
    # for the batch's): after it, never during. Resumed, it ran none.
    assert_runs_never_overlap(runs, {paused.pid: stopped})  # (as good as dead meanwhile)
    late = [
        r for rs in runs.values() for r in rs if r["pid"] == paused.pid and r["start"] > resumed
    ]
    assert late == []
    store.close()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize("flags", [(), ("--prefetch", "auto")], ids=["defaults", "auto"])
def test_a_job_that_hangs_holds_no_other_for_long(tmp_path: Path, flags: tuple[str, ...]) -> None:
    # At the defaults, one job per claim, the other worker runs everything else meanwhile.
    # A worker sizing its claims holds the rest of its batch, and the completions before the
    # hanging job, only until the job has run for RELIEF_AFTER: then its heartbeat hands
    # the held ones back and records the completed ones.
    db = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Noop(n) for n in range(1500)])
    store.enqueue(Sleeps(30))
    store.enqueue_many([Noop(n) for n in range(1500)])
    work = subprocess.Popen(
        [
            *(sys.executable, "-m", "liteq", "work", "--db", str(db), "--import", "tests.jobs"),
            *("--processes", "2", "--graceful-timeout", "1", "--lease", "6", "-q", *flags),
        ],
        cwd=ROOT,
    )
    try:
        wait_until(lambda: store.count(status=Status.QUEUED) == 0, timeout=25)
        wait_until(lambda: store.count(status=Status.RUNNING) == 1, timeout=5)
    finally:
        work.send_signal(signal.SIGTERM)  # (the hanging job is re-queued after 1 s)
        work.wait(timeout=30)
        store.close()


def test_a_timed_job_that_kills_its_worker_re_runs_no_finished_job_before_it(
    tmp_path: Path,
) -> None:
    # In a batch the worker sized, the completions before a job with max_runtime are
    # recorded before it starts: its death (past max_runtime, say) re-runs none of them.
    db, trace = tmp_path / "q.sqlite", tmp_path / "q.trace"
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Traced(str(trace)) for _ in range(400)])
    stuck = store.enqueue(ExitsOnce(str(trace)), max_runtime=10)
    store.enqueue_many([Traced(str(trace)) for _ in range(400)])
    store.close()
    work = subprocess.run(
        [
            *(sys.executable, "-m", "liteq", "work", "--db", str(db), "--import", "tests.jobs"),
            *("--burst", "--prefetch", "auto", "-q"),
        ],
        cwd=ROOT,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert work.returncode in (0, 1), work.stderr
    runs = runs_by_job(trace)
    assert len(runs) == 801
    again = sorted(job for job, job_runs in runs.items() if len(job_runs) > 1)
    assert again == [stuck.id], again


class DeletesAnother(liteq.Job):
    """Deletes another job of the store the test watches (WATCHED), as an operator would."""

    def __init__(self, other: int, then_sleep: float = 0.0) -> None:
        self.other = other
        self.then_sleep = then_sleep

    def run(self, job: liteq.ManagedJob) -> None:
        WATCHED[0].delete(self.other)
        time.sleep(self.then_sleep)


def test_a_completion_lost_with_its_batch_is_not_counted_done(
    watched: liteq.stores.BaseStore,
) -> None:
    # Two jobs claimed together: the first completes, its acknowledgement waits for the
    # batch's; the second deletes it meanwhile. The first's completion is lost (the job is
    # gone), and the worker's totals count one job done, not two.
    first = watched.enqueue(Noop())
    watched.enqueue(DeletesAnother(first.id))
    worker = liteq.Worker(
        watched, exit_if_no_jobs=True, jitter=False, handle_signals=False, prefetch=2
    )
    assert worker.start() == 0
    assert watched.totals() == {"default": (1, 0)}


def test_a_held_job_deleted_while_it_waits_does_not_run(
    watched: liteq.stores.BaseStore, tmp_path: Path
) -> None:
    # Claimed in one batch: the first job deletes the third, then takes longer than a
    # held job is trusted without asking (HELD_FRESH): the third is asked after, and is gone.
    trace = tmp_path / "q.trace"
    second = watched.enqueue(Traced(str(trace)))
    third = watched.enqueue(Traced(str(trace)))
    watched.enqueue(DeletesAnother(third.id, then_sleep=2 * HELD_FRESH), priority=10)
    worker = liteq.Worker(
        watched, exit_if_no_jobs=True, jitter=False, handle_signals=False, prefetch=3
    )
    assert worker.start() == 0
    assert sorted(runs_by_job(trace)) == [second.id]  # (the second was asked too: still its)
