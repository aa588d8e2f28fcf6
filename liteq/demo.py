"""`liteq demo`: a realistic mix of jobs through a real SQLite queue, shown as a table."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from liteq.errors import StoreError
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.status import Status
from liteq.stores.sqlite import SQLiteStore
from liteq.waitasync import resolve_wait_async
from liteq.worker import Worker


class ResizeImage(Job):
    """Make a thumbnail (pretend)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, job: ManagedJob) -> None:
        time.sleep(0.15)

    def description(self) -> str:
        return f"resize {self.name}"


class SendEmail(Job):
    """Send an email (pretend)."""

    def __init__(self, to: str) -> None:
        self.to = to

    def run(self, job: ManagedJob) -> None:
        time.sleep(0.05)

    def description(self) -> str:
        return f"email {self.to}"


class BuildReport(Job):
    """A job scheduled for later."""

    def __init__(self, month: str) -> None:
        self.month = month

    def run(self, job: ManagedJob) -> None:
        time.sleep(0.1)

    def description(self) -> str:
        return f"report {self.month}"


class ChargeCard(Job):
    """Fails every time: retried with backoff, then FAILED."""

    retry_backoff = 1.3
    retry_backoff_max = 2.0

    def __init__(self, order: int) -> None:
        self.order = order

    def run(self, job: ManagedJob) -> None:
        raise RuntimeError(f"card declined for order {self.order}")

    def description(self) -> str:
        return f"charge order {self.order}"


class TranscodeVideo(Job):
    """Hands the work to an outside service; its callback finishes the job."""

    def __init__(self, video: str) -> None:
        self.video = video

    def run(self, job: ManagedJob) -> Status:
        return Status.WAIT_ASYNC

    def resolve_wait_async(self, data: Any) -> Status:
        return Status.COMPLETED if data == "done" else Status.FAILED

    def description(self) -> str:
        return f"transcode {self.video}"


class RebuildSearchIndex(Job):
    """Coalesced: asking twice while one is pending makes one job."""

    def run(self, job: ManagedJob) -> None:
        time.sleep(0.1)

    def coalesce_id(self) -> str:
        return "search-index"

    def description(self) -> str:
        return "rebuild search index"


def _enqueue(store: SQLiteStore, out: TextIO) -> int:
    keep: dict[str, Any] = {"delete_on_complete": False}
    for name in ("cat.jpg", "dog.jpg", "owl.png", "fox.png", "elk.jpg", "bee.png"):
        store.enqueue(ResizeImage(name), queue="images", **keep)
    for to in ("ann@example.com", "bo@example.com", "cy@example.com"):
        store.enqueue(SendEmail(to), queue="mail", priority=10, **keep)
    store.enqueue(BuildReport("2026-11"), queue="reports", delay=1.5, **keep)
    store.enqueue(ChargeCard(1042), queue="payments", priority=5, max_attempts=3, **keep)
    store.enqueue(TranscodeVideo("launch.mp4"), queue="video", **keep)
    first = store.enqueue(RebuildSearchIndex(), queue="search", **keep)
    second = store.enqueue(RebuildSearchIndex(), queue="search", **keep)
    out.write(
        f"Enqueued {store.count()} jobs into {store.path} "
        f"(the second search-index rebuild coalesced into job {second.id}: "
        f"{'same job' if first.id == second.id else 'NOT coalesced'}).\n"
    )
    return store.count()


def _outside_service(store: SQLiteStore, stop: threading.Event) -> None:
    """Plays the transcoding service: calls back a moment after a job starts waiting."""
    while not stop.wait(0.1):
        for mjob in store.jobs(status=Status.WAIT_ASYNC):
            if mjob.started_at and time.time() - mjob.started_at.timestamp() > 1.0:
                resolve_wait_async(store, mjob.id, "done")


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} jobs finished"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%H:%M:%S.%f")[:-4]


def table(jobs: list[ManagedJob]) -> str:
    """Render jobs as a plain-text table."""
    head = (
        "id",
        "job",
        "queue",
        "pri",
        "status",
        "tries",
        "enqueued",
        "started",
        "finished",
        "error",
    )
    rows = [head] + [
        (
            str(m.id),
            m.job.description() if m.job else m.job_type,
            m.queue,
            str(m.priority),
            m.status.value,
            f"{m.attempts}/{m.max_attempts}",
            _time(m.created_at),
            _time(m.started_at),
            _time(m.finished_at),
            (m.error or "")[:48],
        )
        for m in jobs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_a_demo_queue(path: str) -> bool:
    """Whether `path` holds nothing but the demo's jobs (so the demo may start it afresh)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return True
    try:
        store = SQLiteStore(path, readonly=True)
    except StoreError:
        return False
    try:
        return all(m.job_type.startswith(f"{__name__}.") for m in store.jobs())
    finally:
        store.close()


def run_demo(path: str = "liteq-demo.sqlite", out: TextIO = sys.stdout) -> int:
    """Run the demo into a fresh file at `path` (a demo queue there is replaced; any other
    file is refused); return 0 if every job ended as expected."""
    if not _is_a_demo_queue(path):
        raise StoreError(
            f"{path} exists and is not a liteq demo queue: the demo replaces its file, so "
            "give it another (liteq demo --db demo.sqlite)"
        )
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)  # a fresh file: no connection to it is open now
    logging.getLogger("liteq").setLevel(logging.CRITICAL)  # the table shows the errors
    store = SQLiteStore(path)
    total = _enqueue(store, out)
    worker = Worker(store, wakeup_every=0.2, jitter=False, check_code=False)
    stop = threading.Event()
    threads = [
        threading.Thread(target=worker.start, name="demo-worker"),
        threading.Thread(target=_outside_service, args=(store, stop), name="demo-callback"),
    ]
    for thread in threads:
        thread.start()
    tty = out.isatty()
    began = time.monotonic()
    try:
        while True:
            done = store.count(status=Status.COMPLETED) + store.count(status=Status.FAILED)
            if tty:
                out.write("\r" + _bar(done, total))
                out.flush()
            if done >= total or time.monotonic() - began > 60:
                break
            time.sleep(0.05)
    finally:
        worker.stop()
        stop.set()
        for thread in threads:
            thread.join()
    out.write(
        ("\r" if tty else "") + _bar(done, total) + f" in {time.monotonic() - began:.1f}s\n\n"
    )
    jobs = list(store.jobs())
    out.write(table(jobs) + "\n\n")
    failed = [m for m in jobs if m.status is Status.FAILED]
    out.write(
        f"{len(jobs) - len(failed)} completed, {len(failed)} failed after retries "
        f"(as intended: the card is always declined). The queue is {Path(path).resolve()}.\n"
    )
    expected_failed = [m.job_type for m in failed] == [f"{__name__}.ChargeCard"]
    return 0 if done == total and expected_failed else 1
