"""A worker's second thread: it renews leases, reports the store's health, and ends a
process whose job could not be interrupted."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from liteq.errors import StoreCorrupt, StoreError, StoreMoved
from liteq.status import Status
from liteq.worker.exits import EXIT_SIGNAL

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.stores.contract import Store
    from liteq.worker.signals import Signals

log = logging.getLogger("liteq.worker")

#: How often a worker asks its store for conditions an operator should hear of.
HEALTH_EVERY: Final = 10.0


def report_health(store: Store) -> None:
    """Log what the store says an operator should hear of (each condition once)."""
    try:
        for warning in store.check_health():
            log.warning("%s", warning)
    except StoreError as exc:  # (the worker's own loop meets it too, and says so)
        log.debug("checking the store's health failed: %s", exc)


class Heartbeat:
    """Renews, every `lease`/3 seconds, the leases of the jobs `holding()` returns."""

    def __init__(
        self,
        store: Store,
        holding: Callable[[], list[ManagedJob]],
        signals: Signals,
        *,
        lease: float,
        check_health: bool,
    ) -> None:
        self.store = store
        self.holding = holding
        self.signals = signals
        self.lease = lease
        self.check_health = check_health
        #: When leases were last renewed (monotonic clock).
        self.renewed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="liteq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        renew_at = time.monotonic() + self.lease / 3
        health_at = time.monotonic()
        while not self._stop.wait(0.5):
            hard_exit_at = self.signals.hard_exit_at
            if hard_exit_at is not None and time.monotonic() > hard_exit_at:
                # The job could not be unwound (stuck outside Python): end the process; the
                # supervisor or the lease re-queues the job once this process is gone.
                log.error("job could not be interrupted: exiting hard")
                os._exit(EXIT_SIGNAL)
            if self.check_health and time.monotonic() >= health_at:
                health_at = time.monotonic() + HEALTH_EVERY
                report_health(self.store)
            if time.monotonic() < renew_at:
                continue
            renew_at = time.monotonic() + self.lease / 3
            mine = self.holding()
            if not mine:
                continue
            try:
                kept = {id(m) for m in self.store.renew_leases(mine, self.lease)}
            except (StoreMoved, StoreCorrupt):
                return  # the worker's loop meets it too, and stops
            except StoreError as exc:
                log.error("renewing leases failed (%s); trying again shortly", exc)
                renew_at = time.monotonic() + 1.0
                continue
            self.renewed = time.monotonic()
            for mjob in mine:  # (one finished meanwhile is no longer RUNNING here)
                if id(mjob) not in kept and mjob.status is Status.RUNNING:
                    log.warning("job %d: lease lost; it was re-queued elsewhere", mjob.id)
