"""The queue's counts, shared by every page, refresh and scrape.

The counts of jobs by queue and status are kept by the store (a few rows to read, whatever
the queue's size), but what depends on the time (due jobs, the oldest wait) is read through
an index, and grows with the jobs scheduled for later: the dashboard recounts at most once
per `fresh` seconds, and never spends more than `share` of its time counting, however many
pages poll it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from liteq import admin
from liteq.stores.contract import Store


class Snapshot:
    """admin.overview() of a store, recomputed when stale."""

    def __init__(self, store: Store, *, fresh: float = 1.0, share: float = 0.2) -> None:
        self.store = store
        self.fresh = fresh
        self.share = share
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._until = 0.0  # monotonic time when the report is stale

    def get(self) -> dict[str, Any]:
        """The report, counted now or not long ago (its "as_of" says when)."""
        with self._lock:  # one count at a time; the rest wait for it and share it
            if self._report is None or time.monotonic() >= self._until:
                started = time.monotonic()
                report = admin.overview(self.store)
                report["as_of"] = self.store.clock()
                took = time.monotonic() - started
                self._report = report
                self._until = time.monotonic() + max(self.fresh, took / self.share - took)
            return self._report

    def forget(self) -> None:
        """Count again at the next get() (an action has changed the queue)."""
        with self._lock:
            self._until = 0.0

    def queue_names(self) -> list[str]:
        """The queues of the last report, if there is one (never counts for it)."""
        report = self._report
        return [] if report is None else [q["queue"] for q in report["queues"]]
