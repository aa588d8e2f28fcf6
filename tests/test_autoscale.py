"""Autoscaling: the policy's properties (Hypothesis), the driver seam with a test double,
`liteq work --autoscale/--pool` with real processes, and its flags' mistakes."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import liteq
from liteq.cli import main
from liteq.worker.autoscale import Autoscaler, Changes, Limits, Pool, Sample, cap, decide
from tests.helpers import wait_until
from tests.jobs import Traced
from tests.test_supervisor import Work, db, work  # noqa: F401 - fixtures
from tests.traces import runs_by_job

COOL = {"LITEQ_AUTOSCALE_COOLDOWN": "1"}


# -- the policy -----------------------------------------------------------------------
class FakeDriver:
    """A test double of a `Scalable` driver, as one for a container platform would be: it
    records what it is asked and reaches it at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[int] = []

    def current(self) -> int:
        return self.n

    def scale_to(self, n: int) -> None:
        self.asked.append(n)
        self.n = n


limits_st = st.builds(
    lambda low, extra, target, cool: Limits(low, max(1, low + extra), target, cool),
    st.integers(0, 4),
    st.integers(0, 6),
    st.floats(0.5, 10),
    st.floats(0, 30),
)
load_st = st.lists(
    st.tuples(st.integers(0, 500), st.one_of(st.none(), st.floats(0, 100))), min_size=1
)


@settings(max_examples=200, deadline=None)
@given(limits_st, load_st, st.integers(0, 12))
def test_policy_stays_within_limits_and_steps_down_once_per_cooldown(
    limits: Limits, load: list[tuple[int, float | None]], start: int
) -> None:
    driver = FakeDriver(start)
    scaler = Autoscaler([Pool("p", limits, driver)])
    downs: list[float] = []
    now = 0.0
    for due, wait in load * 3:
        before = driver.n
        scaler.tick({"p": Sample(now, due, wait if due else None, busy=0)}, now)
        if before >= limits.minimum and before <= limits.maximum:
            assert limits.minimum <= driver.n <= limits.maximum
            if driver.n < before:
                assert driver.n == before - 1  # one step down at a time
                downs.append(now)
        now += 1.0
    assert limits.minimum <= driver.n <= limits.maximum
    for a, b in itertools.pairwise(downs):
        assert b - a >= limits.cooldown


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(1, 50))
def test_policy_converges_on_steady_load(high: int, due: int) -> None:
    # A steady backlog whose oldest job waits past the target: it grows to the maximum and
    # stays there.
    limits = Limits(1, high, 1.0, 5.0)
    driver = FakeDriver(1)
    scaler = Autoscaler([Pool("p", limits, driver)])
    for t in range(40):
        scaler.tick({"p": Sample(float(t), due, 3.0, busy=driver.n)}, float(t))
    assert driver.n == high
    settled = list(driver.asked)
    for t in range(40, 80):
        scaler.tick({"p": Sample(float(t), due, 3.0, busy=driver.n)}, float(t))
    assert driver.asked == settled


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), st.integers(1, 8), st.floats(0, 10))
def test_policy_scales_to_its_minimum_when_idle(low: int, extra: int, cool: float) -> None:
    limits = Limits(low, low + extra, 2.0, cool)
    driver = FakeDriver(low + extra)
    scaler = Autoscaler([Pool("p", limits, driver)])
    for t in range(int((extra + 2) * (cool + 2)) + 2):
        scaler.tick({"p": Sample(float(t), 0, None)}, float(t))
    assert driver.n == low  # zero, when the minimum is


def test_policy_reasons() -> None:
    limits = Limits(0, 8, 5.0, 60.0)
    assert decide([Sample(0, 3, 1.0)], 0, limits, Changes(), 0) == decide(
        [Sample(0, 3, 1.0)], 0, limits, Changes(), 0
    )
    assert decide([Sample(0, 3, 1.0)], 0, limits, Changes(), 0).count == 1
    grow = decide([Sample(0, 30, 12.3)], 2, limits, Changes(), 0)
    assert (grow.count, grow.reason) == (4, "oldest due waited 12.3 s")
    # 100 due at 2/s take 50 s: more than the 5 s target, so grow (at most doubling).
    fast = decide([Sample(0, 100, 0.1, rate=2.0)], 2, limits, Changes(), 0)
    assert fast.count == 4 and "100 due" in fast.reason
    # Just grown: it waits for the new workers to settle first.
    assert decide([Sample(0, 30, 12.3)], 2, limits, Changes(up=-0.5), 0).count == 2


def test_cap_holds_the_sum_and_memory() -> None:
    assert cap({"a": 4, "b": 4}, {"a": 1, "b": 1}, 3, None) == {"a": 2, "b": 1}
    assert cap({"a": 4, "b": 0}, {"a": 1, "b": 2}, 3, None) == {"a": 3, "b": 0}
    assert cap({"a": 4}, {"a": 1}, None, 1) == {"a": 2}
    assert cap({"a": 4}, {"a": 3}, None, 0) == {"a": 3}


# -- real processes ---------------------------------------------------------------------
def count(w: Work) -> int:
    return len(w.children())


@pytest.mark.slow
def test_ramp_grows_drains_once_each_and_shrinks_back(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--autoscale", "1:4", "--target-wait", "0.5", env=COOL)
    w.wait_for_workers(1)
    ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1) for _ in range(200)])]
    started = time.monotonic()
    wait_until(lambda: count(w) == 4, timeout=8, what="4 workers")
    grew_in = time.monotonic() - started
    wait_until(lambda: store.count() == 0, timeout=20, what="drained")
    wait_until(lambda: count(w) == 1, timeout=10, what="back to 1 worker")
    assert w.stop() == 0
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(ids)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values())
    log = w.log()
    assert re.search(r"all: \d -> 4, oldest due waited \d+\.\d s", log), log
    assert "all: 2 -> 1, idle for 1 s" in log
    assert "scaled down" in log and "starting a new one" not in log
    assert grew_in < 8


@pytest.mark.slow
def test_pool_from_zero_wakes_on_the_first_job_and_returns_to_zero(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--pool", "default=0:2", env=COOL)
    wait_until(lambda: "autoscaling default 0:2" in w.log(), timeout=10, what="start")
    time.sleep(0.5)
    assert count(w) == 0
    store.enqueue(Traced(str(trace), 0.0))
    enqueued = time.monotonic()
    wait_until(lambda: store.count() == 0, timeout=5, what="done")
    assert time.monotonic() - enqueued < 3.0
    wait_until(lambda: count(w) == 0, timeout=8, what="back to zero")
    assert w.stop() == 0


@pytest.mark.slow
def test_max_processes_caps_the_sum_of_pools(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    ids = {
        queue: [j.id for j in store.enqueue_many([Traced(str(trace), 0.1)] * 40, queue=queue)]
        for queue in ("a", "b")
    }
    w = work("--pool", "a=1:4", "--pool", "b=1:4", "--max-processes", "3", "--target-wait", "0.3")
    most = 0
    deadline = time.monotonic() + 20
    while store.count() and time.monotonic() < deadline:
        most = max(most, count(w))
        time.sleep(0.02)
    assert store.count() == 0
    assert most == 3
    assert w.stop() == 0
    # Each pool's workers served only its queue.
    runs = runs_by_job(trace)
    pids = {q: {run["pid"] for i in ids[q] for run in runs[i]} for q in ids}
    assert not pids["a"] & pids["b"]


# -- the flags' mistakes ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--autoscale", "1:4", "--processes", "2"], "not with --autoscale"),
        (["--autoscale", "4:1"], "expected MIN:MAX with 0 <= MIN <= MAX"),
        (["--autoscale", "0:0"], "expected MIN:MAX with 0 <= MIN <= MAX"),
        (["--autoscale", "four"], "expected MIN:MAX"),
        (["--pool", "mail"], "expected QUEUES=MIN:MAX"),
        (["--pool", "mail=1:2", "--pool", "mail,x=0:1"], "'mail' is in two --pool"),
        (["--autoscale", "1:2", "--pool", "mail=1:2"], "use --pool for each"),
        (["--max-processes", "3"], "--max-processes needs --autoscale or --pool"),
        (["--pool", "a=2:4", "--pool", "b=2:4", "--max-processes", "3"], "below the pools'"),
        (["--autoscale", "1:2", "--burst"], "not with autoscaling"),
    ],
)
def test_autoscale_flag_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    argv = ["work", "--db", str(tmp_path / "q.sqlite"), "--import", "tests.jobs", *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err
    assert not (tmp_path / "q.sqlite").exists()


def test_no_orphans_after_stop(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    w = work("--autoscale", "2:3")
    pids = w.wait_for_workers(2)
    assert w.stop() == 0
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


@pytest.mark.slow
def test_scaling_down_under_a_trickle_loses_nothing_and_runs_nothing_twice(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--autoscale", "1:4", "--target-wait", "0.3", env=COOL)
    ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1) for _ in range(80)])]
    wait_until(lambda: count(w) == 4, timeout=8, what="4 workers")
    # Then a trickle the pool outgrows: it shrinks while jobs still arrive and run.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ids.append(store.enqueue(Traced(str(trace), 0.05)).id)
        time.sleep(0.1)
    wait_until(lambda: store.count() == 0, timeout=10, what="drained")
    assert w.stop() == 0
    assert "scaled down" in w.log()
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(ids)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs
