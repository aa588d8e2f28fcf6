"""Job classes of the benchmarks (importable by worker processes as `bench.jobs`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import liteq

ROOT = Path(__file__).resolve().parents[1]


def liteq_work(db: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `liteq work` on `db` with this module's job classes, quiet and without jitter."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liteq",
            "work",
            "--db",
            str(db),
            "--import",
            "bench.jobs",
            "--no-jitter",
            "-q",
            *args,
        ],
        cwd=ROOT,
        **popen,
    )


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
