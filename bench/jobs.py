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


class Noop(liteq.Job):
    def run(self, job: liteq.ManagedJob) -> None:
        pass
