"""Periodic jobs for the tests that run real `liteq work` processes (tests/test_periodic.py):
each run of `tick` appends its slot and its process to the file $LITEQ_TEST_TRACE."""

from __future__ import annotations

import os
from datetime import datetime

import liteq

store = liteq.connect()  # the worker's queue (LITEQ_URL)


@store.periodic(every=1, name="tick", catch_up=5)  # (a busy second runs late, not never)
def tick(scheduled_at: datetime) -> None:
    """Trace the slot this run is for."""
    line = f"{scheduled_at.timestamp():.0f} {os.getpid()}\n"
    with open(os.environ["LITEQ_TEST_TRACE"], "a") as trace:
        trace.write(line)
