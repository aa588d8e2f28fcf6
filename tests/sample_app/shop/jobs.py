"""The application's jobs, on the queue LITEQ_URL names (as `liteq work` sets it)."""

from __future__ import annotations

from datetime import datetime

import liteq

store = liteq.connect()

#: What the jobs did, for the tests to read (a real app would send mail).
SENT: list[str] = []


@store.task(queue="mail")
def send_welcome(email: str) -> None:
    SENT.append(f"welcome {email}")


@store.task
def remind(email: str) -> None:
    SENT.append(f"reminder {email}")


#: How many times flaky_export fails before it succeeds.
FAILURES = {"left": 0}


@store.task(max_attempts=3)
def flaky_export(name: str) -> None:
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise ConnectionError("the export server hung up")
    SENT.append(f"exported {name}")


@store.periodic(every=24 * 3600)  # each day at 00:00 UTC (a cron string needs liteq-jobs[cron])
def daily_report(scheduled_at: datetime) -> None:
    SENT.append(f"report {scheduled_at:%Y-%m-%d}")
