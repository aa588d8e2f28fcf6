"""Job classes of the results and dependencies tests; importable, so `liteq work` runs them."""

from __future__ import annotations

import os
import time
from typing import Any

import liteq


def trace(path: str, line: str) -> None:
    """Append a line to `path` (one write: lines of several processes never mix)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Step(liteq.Job):
    """Traces its start and end to `path`, sleeping `seconds` between; returns its name and
    its dependencies' results."""

    def __init__(self, name: str, path: str = "", seconds: float = 0.0) -> None:
        self.name = name
        self.path = path
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> Any:
        if self.path:
            trace(self.path, f"start {self.name} {os.getpid()}")
        time.sleep(self.seconds)
        if self.path:
            trace(self.path, f"end {self.name}")
        if job.keep_result is None:
            return None
        before = job.dependency_results()
        return {"name": self.name, "before": {str(k): v for k, v in sorted(before.items())}}


class Breaks(liteq.Job):
    """Fails every attempt."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def run(self, job: liteq.ManagedJob) -> None:
        if self.path:
            trace(self.path, "start breaks")
        raise RuntimeError("broken on purpose")


class Unencodable(liteq.Job):
    """Returns what JSON cannot hold."""

    keep_result = True

    def run(self, job: liteq.ManagedJob) -> Any:
        return {1, 2, 3}
