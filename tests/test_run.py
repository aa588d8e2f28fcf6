"""A Run is one job in flight; a worker's signals act on every run in its InFlight set, so
that several can be in flight at once (coroutine jobs). Real signals, in this process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import liteq
from liteq.managed import ManagedJob
from liteq.worker.exits import EXIT_SIGNAL
from liteq.worker.run import InFlight, Run
from liteq.worker.signals import Interrupted, Signals
from tests.jobs import Noop


@pytest.fixture
def jobs() -> Iterator[list[ManagedJob]]:
    store = liteq.MemoryStore()
    try:
        yield [store.enqueue(Noop()) for _ in range(2)]
    finally:
        store.close()


@pytest.fixture
def in_flight() -> Iterator[tuple[InFlight, Signals]]:
    runs = InFlight()
    signals = Signals(0.05, runs)
    signals.install()
    try:
        yield runs, signals
    finally:
        signals.restore()


def test_in_flight_is_a_set_of_runs_read_as_a_snapshot(jobs: list[ManagedJob]) -> None:
    runs = InFlight()
    assert runs.now() == () and runs.current_id() is None
    first, second = Run(jobs[0]), Run(jobs[1])
    runs.add(first)
    runs.add(second)
    assert set(runs.now()) == {first, second}
    runs.discard(first)
    assert runs.now() == (second,) and runs.current_id() == jobs[1].id
    assert not first.executing and first.hard_exit_at is None  # each run's own state
    second.executing = True
    assert not first.executing and not Run(jobs[0]).executing


def test_term_times_every_run_in_flight_and_interrupts_the_one_executing(
    jobs: list[ManagedJob], in_flight: tuple[InFlight, Signals]
) -> None:
    runs, signals = in_flight
    running, waiting = Run(jobs[0]), Run(jobs[1])  # (waiting: a coroutine job, say)
    runs.add(running)
    runs.add(waiting)
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.stop_requested and signals.exit_status == EXIT_SIGNAL
    assert running.graceful_deadline is not None and waiting.graceful_deadline is not None
    running.executing = True
    with pytest.raises(Interrupted, match="graceful shutdown timeout") as caught:
        time.sleep(5)
    running.executing = False
    assert caught.value.stop_worker
    # Both are stopped and on the clock of a hard exit, which is no fault of their jobs.
    for run in (running, waiting):
        assert run.hard_exit_at is not None and not run.hard_exit_blames_job


def test_a_run_that_ends_leaves_the_alarms_of_the_others_armed(
    jobs: list[ManagedJob], in_flight: tuple[InFlight, Signals]
) -> None:
    runs, signals = in_flight
    short, long = Run(jobs[0]), Run(jobs[1])
    runs.add(short)
    runs.add(long)
    signals.job_starts(long, 0.1)
    signals.job_starts(short, 30)
    signals.job_ends(short)
    runs.discard(short)
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # still armed, for `long`
    long.executing = True
    with pytest.raises(Interrupted, match="max_runtime") as caught:
        time.sleep(5)
    long.executing = False
    assert not caught.value.stop_worker and long.hard_exit_blames_job
    assert short.hard_exit_at is None
