"""Helpers shared by the tests that run real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import liteq
from liteq.codec import encode_as, how_to_encode

ROOT = Path(__file__).parents[1]


def liteq_work(db: Path | str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `liteq work` on `db` (a path or a URL; job classes from tests.jobs, no jitter) in
    its own session."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liteq",
            "work",
            "--db",
            str(db),
            "--import",
            "tests.jobs",
            "--no-jitter",
            *args,
        ],
        cwd=ROOT,
        start_new_session=True,
        **popen,
    )


def bare_worker(db: Path, **options: object) -> subprocess.Popen[bytes]:
    """A Worker without a supervisor in its own process (burst mode, no jitter)."""
    extra = "".join(f", {name}={value!r}" for name, value in options.items())
    code = (
        "import liteq, sys, tests.jobs; liteq.Worker(liteq.SQLiteStore(sys.argv[1]),"
        f" jitter=False, exit_if_no_jobs=True{extra}).start()"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(db)], cwd=ROOT)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll until `predicate()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


def encode(job: liteq.Job) -> tuple[str, str]:
    """(type name, payload) that enqueueing `job` stores."""
    return encode_as(job, how_to_encode(type(job)))
