"""Module-level functions and a Job class that tests/test_periodic.py schedules in-process
(each test registers its schedules and forgets them after)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import liteq

#: What the functions below were called with, in order.
CALLS: list[Any] = []


def at_slot(scheduled_at: datetime) -> None:
    CALLS.append(scheduled_at)


async def at_slot_async(scheduled_at: datetime) -> None:
    CALLS.append(("async", scheduled_at))


def plain() -> None:
    CALLS.append("plain")


def fails_once(scheduled_at: datetime) -> None:
    CALLS.append(scheduled_at)
    if len(CALLS) == 1:
        raise RuntimeError("the first attempt fails")


class Report(liteq.Job):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def run(self, job: liteq.ManagedJob) -> None:
        CALLS.append((self.kind, job.run_at))
