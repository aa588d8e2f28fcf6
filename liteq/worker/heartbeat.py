"""A worker's second thread: it renews leases, reports the store's health, and ends a
process whose job could not be interrupted."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import psutil

from liteq.errors import StoreCorrupt, StoreError, StoreMoved
from liteq.status import Status
from liteq.worker.exits import EXIT_SIGNAL

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.stores.contract import Finished, Store, WorkerInfo
    from liteq.worker.run import InFlight
    from liteq.worker.signals import Signals

log = logging.getLogger("liteq.worker")

#: The share of its lease a running job outlives without a renewal before it is stopped:
#: past the lease it may be rescued and run elsewhere, and it must not run twice at once.
LEASE_GIVEN_UP: Final = 0.8

#: How often a worker asks its store for conditions an operator should hear of.
HEALTH_EVERY: Final = 10.0

#: How often a worker purges results that expired (at a beat; the first at its first beat),
#: and how many jobs at most each time, in a transaction of its own.
EXPIRE_EVERY: Final = 60.0
EXPIRE_BATCH: Final = 500

#: With max_rss, how often a worker's heartbeat reads its RSS while a job runs.
RSS_CHECK_EVERY: Final = 0.1


def _rss() -> int | None:
    """The bytes of memory this process uses, for the registry of workers."""
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return None


def report_health(store: Store) -> None:
    """Log what the store says an operator should hear of (each condition once)."""
    try:
        for warning in store.check_health():
            log.warning("%s", warning)
    except StoreError as exc:  # (the worker's own loop meets it too, and says so)
        log.debug("checking the store's health failed: %s", exc)


class Heartbeat:
    """Every `lease`/3 seconds: renews the leases of the jobs `holding()` returns, and
    beats in the store's registry of workers with `jobs_done()`, the job in flight and the
    outcomes counted since the last beat. It stops a job in flight (through `signals`)
    whose lease is lost, or that takes the worker past max_rss, and ends the process when
    a job could not be interrupted."""

    def __init__(
        self,
        store: Store,
        holding: Callable[[], list[ManagedJob]],
        jobs_done: Callable[[], int],
        in_flight: InFlight,
        signals: Signals,
        *,
        lease: float,
        check_health: bool,
        disown: Callable[[], None] = lambda: None,
        relieve: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.holding = holding
        self.jobs_done = jobs_done
        self.in_flight = in_flight
        self.signals = signals
        self.lease = lease
        self.check_health = check_health
        #: Before a hard exit that is no fault of the job (a stop past the graceful
        #: timeout): tell the supervisor no job was running, so that none is blamed.
        self.disown = disown
        #: At each tick: the worker hands back what a long job keeps waiting (its batch).
        self.relieve = relieve
        #: Stop a job that takes the worker past this many bytes while it runs (None: no
        #: watch; `liteq work`'s supervisor watches its workers itself). Set by start().
        self.max_rss: int | None = None
        #: When leases were last renewed, or taken by a claim (monotonic clock).
        self.renewed = time.monotonic()
        #: Runs (id, attempt) whose leases a renewal found gone (another worker rescued
        #: them while this process was paused, say): a held one must not start
        #: (Worker._still_mine). Emptied as a new batch is claimed.
        self.lost: set[tuple[int, int]] = set()
        self._info: WorkerInfo | None = None
        self._registered = False
        # Running totals per queue, written by the worker's thread alone (no lock on every
        # job); a beat tells the difference from the totals it told last.
        self._completed: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._told: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, queue: str, completed: bool, n: int = 1) -> None:
        """`n` jobs of `queue` completed, or attempts failed: told at the next beat."""
        totals = self._completed if completed else self._failed
        totals[queue] = totals.get(queue, 0) + n

    def claimed(self) -> None:
        """The worker has just claimed the jobs it holds: their leases are as good as
        renewed now."""
        self.renewed = time.monotonic()
        self.lost = set()

    def start(self, info: WorkerInfo, *, max_rss: int | None = None) -> None:
        """Register the worker `info` describes, and start the thread (with `max_rss`, it
        watches the memory of the process while a job runs)."""
        self._info = info
        self.max_rss = max_rss
        self._registered = False
        self._register()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="liteq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; beat a last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.beat()

    def _register(self) -> None:
        # Best effort: the worker runs jobs all the same, and the next beat tries again.
        if self._info is None or self._registered:
            return
        try:
            self.store.register_worker(self._info)
        except StoreError as exc:
            log.debug("registering the worker failed: %s", exc)
        else:
            self._registered = True

    def beat(self) -> bool:
        """Tell the registry this worker lives, and what it finished; False if it failed."""
        if self._info is None:
            return False
        self._register()
        # (Copying a dict of str keys is one step under the GIL: no torn read.)
        totals = dict(self._completed), dict(self._failed)
        finished: Finished = {}
        for queue in totals[0].keys() | totals[1].keys():
            done = totals[0].get(queue, 0) - self._told[0].get(queue, 0)
            failed = totals[1].get(queue, 0) - self._told[1].get(queue, 0)
            if done or failed:
                finished[queue] = (done, failed)
        jobs_done, current = self.jobs_done(), self.in_flight.current_id()
        try:
            owner = self._info.owner
            self.store.beat(
                owner,
                jobs_done=jobs_done,
                current_job=current,
                finished=finished,
                rss=_rss(),
                in_flight=len(self.in_flight.now()),
            )
        except StoreError:
            return False  # told next time
        self._told = totals
        return True

    def _run(self) -> None:
        beat_at = time.monotonic() + self.lease / 3
        health_at = expire_at = time.monotonic()
        # A job may allocate a gigabyte a second: with a limit, look ten times as often.
        tick = 0.5 if self.max_rss is None else RSS_CHECK_EVERY
        while not self._stop.wait(tick):
            self._watch_rss()
            for run in self.in_flight.now():
                hard_exit_at = run.hard_exit_at
                if hard_exit_at is not None and time.monotonic() > hard_exit_at:
                    # The job could not be unwound (stuck outside Python): end the process;
                    # the supervisor or the lease re-queues the job once this process is gone.
                    log.error("job could not be interrupted: exiting hard")
                    if not run.hard_exit_blames_job:
                        self.disown()
                    os._exit(EXIT_SIGNAL)
            self.relieve()
            if self.check_health and time.monotonic() >= health_at:
                health_at = time.monotonic() + HEALTH_EVERY
                report_health(self.store)
            if time.monotonic() < beat_at:
                continue
            beat_at = time.monotonic() + self.lease / 3
            mine = self.holding()
            try:
                self._renew(mine)
            except (StoreMoved, StoreCorrupt):
                return  # the worker's loop meets it too, and stops
            except StoreError as exc:
                log.error("renewing leases failed (%s); trying again shortly", exc)
                beat_at = time.monotonic() + 1.0
                given_up = self.lease * LEASE_GIVEN_UP
                if time.monotonic() - self.renewed > given_up:
                    self._give_up(given_up)
                continue
            self.beat()
            if time.monotonic() >= expire_at:
                expire_at = time.monotonic() + EXPIRE_EVERY
                self._expire()

    def _expire(self) -> None:
        """Purge a batch of expired results (a worker's upkeep: any worker may do it)."""
        try:
            purged = self.store.expire_results(EXPIRE_BATCH)
        except (StoreMoved, StoreCorrupt):
            return  # the worker's loop meets it too, and stops
        except StoreError as exc:
            log.debug("purging expired results failed: %s", exc)
            return
        if purged:
            log.info("purged %d job(s) whose result expired", purged)

    def _give_up(self, given_up: float) -> None:
        """Stop the jobs in flight: their leases went unrenewed too long."""
        reason = (
            f"its lease could not be renewed for {given_up:.1f}s (the store could "
            "not be reached), so it may be run elsewhere"
        )
        for run in self.in_flight.now():
            if not run.lease_given_up:
                run.lease_given_up = True  # (once: it is handed back when it has unwound)
                log.error("job %d: %s: stopping it", run.mjob.id, reason)
                self.signals.lose_lease(run, reason)

    def _watch_rss(self) -> None:
        max_rss = self.max_rss
        if max_rss is None:
            return
        runs = [run for run in self.in_flight.now() if not run.rss_stopped]
        if not runs:
            return
        rss = _rss()
        if rss is None or rss <= max_rss:
            return
        death = f"stopped at {rss >> 20} MiB RSS, over max_rss {max_rss >> 20} MiB"
        for run in runs:
            run.rss_stopped = True
            log.error("job %d: %s: stopping it and this worker", run.mjob.id, death)
            self.signals.stop_for_memory(run, death, shared=len(runs) > 1)

    def _renew(self, mine: list[ManagedJob]) -> None:
        if not mine:
            return
        kept = {id(m) for m in self.store.renew_leases(mine, self.lease)}
        # The lost are known before the renewal counts: a held job must not start on the
        # strength of a renewal that did not renew its own lease.
        self.lost.update((m.id, m.attempts) for m in mine if id(m) not in kept)
        self.renewed = time.monotonic()
        runs = self.in_flight.now()
        for mjob in mine:  # (one finished meanwhile is no longer RUNNING here)
            if id(mjob) not in kept and mjob.status is Status.RUNNING:
                log.warning("job %d: lease lost; it was re-queued elsewhere", mjob.id)
                for run in runs:
                    if run.mjob.id == mjob.id:
                        reason = "its lease was lost: it was re-queued elsewhere"
                        self.signals.lose_lease(run, reason)
