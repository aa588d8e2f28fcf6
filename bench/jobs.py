"""Job classes of the benchmarks (importable by worker processes as `bench.jobs`)."""

from __future__ import annotations

import time

import liteq


class Stamp(liteq.Job):
    """Appends how long after `enqueued_at` it started."""

    def __init__(self, path: str, enqueued_at: float) -> None:
        self.path = path
        self.enqueued_at = enqueued_at

    def run(self, job: liteq.ManagedJob) -> None:
        delay = time.time() - self.enqueued_at
        with open(self.path, "a") as f:
            f.write(f"{delay:.6f}\n")


class Sleep(liteq.Job):
    """Waits a millisecond, as a job that calls a service or touches a disk would."""

    def __init__(self, seconds: float = 0.001) -> None:
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        time.sleep(self.seconds)


class Noop(liteq.Job):
    """Does nothing: the queue's own cost, with a small state like a real job's."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def run(self, job: liteq.ManagedJob) -> None:
        pass
