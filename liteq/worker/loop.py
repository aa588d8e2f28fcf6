"""Worker: runs jobs from a store in this process: plain jobs one at a time, coroutine jobs
up to its concurrency at once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from liteq.errors import LeaseLost, StoreCorrupt, StoreError, StoreMoved
from liteq.job import Job, ResultRefused, bad_result, encode_result, is_coroutine_job
from liteq.managed import ManagedJob, describe
from liteq.record import evolve
from liteq.status import MULLIGAN_CAP, Status
from liteq.stores.contract import WAITS_FOR_ITS_TYPE, Store, WorkerInfo
from liteq.worker.coroutines import Coroutines, Outcome
from liteq.worker.exits import (
    EXIT_CODE_CHANGED,
    EXIT_MEMORY,
    EXIT_OK,
    EXIT_STORE_CORRUPT,
    EXIT_STORE_MOVED,
)
from liteq.worker.heartbeat import Heartbeat
from liteq.worker.identity import make_owner, parse_owner
from liteq.worker.limits import MEMORY_CHECK_EVERY, CodeWatch, MemoryLimit
from liteq.worker.options import WorkerOptions, takes_options
from liteq.worker.run import InFlight, Run
from liteq.worker.schedule import Scheduler
from liteq.worker.signals import Interrupted, Signals
from liteq.worker.sizing import ClaimSize

log = logging.getLogger("liteq.worker")
T = TypeVar("T")

#: While the store fails, a worker retries after this long, doubling up to the max.
STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.5, 30.0
#: With prefetch, the longest a completion waits for its batch before a job starts.
ACK_DELAY: Final = 0.05
#: A job whose code has run this long in a batch the worker sized itself: the heartbeat
#: hands back the jobs held behind it and records the completions before it (_relieve).
RELIEF_AFTER: Final = 1.0
#: A job held this long after its batch was claimed is asked of the store before it starts
#: (deleted meanwhile, it does not run); a batch sized to its jobs starts them all sooner.
HELD_FRESH: Final = 0.25
#: A job in flight at this many deaths of its worker runs alone from then on: a death
#: shared by several coroutine jobs counts a crash against each (see rescue.py), and one
#: such death (a kill, an OOM) should not make every job of the worker run one by one.
RUNS_ALONE_AFTER: Final = 2
#: The longest a job of an unknown type waits before a worker looks at it again.
UNKNOWN_TYPE_WAIT: Final = 300.0


class Worker:
    """Runs jobs from `store` in this process until stopped or an exit condition is met.

        liteq.Worker(store, queues=["mail"], exit_if_no_jobs=True).start()

    After the store come its options, by name or in order: WorkerOptions' (see there for
    each one's meaning and default), checked once; `with_options` takes a WorkerOptions.
    """

    @takes_options(WorkerOptions)
    def __init__(self, store: Store, *args: Any, **kwargs: Any) -> None:
        # (The options' names, types and defaults are WorkerOptions': one place for each.)
        self.options = options = WorkerOptions(*args, **kwargs)
        self.store = store
        #: Jobs this worker has run (any outcome).
        self.jobs_processed = 0
        self._queues = self.options.queues
        self._held: list[ManagedJob] = []  # claimed, not yet started
        self._acks: list[ManagedJob] = []  # completed, not yet acknowledged
        self._acks_since = 0.0
        #: The jobs running now, each with what its signals and heartbeat share.
        self._in_flight = InFlight()
        # For what the heartbeat reads: _held, _acks (not _in_flight, read as a snapshot: a
        # job is in _acks before it leaves _in_flight, so the heartbeat never misses it).
        self._lock = threading.Lock()
        # The batch is the main thread's but while a job's code runs (_executing_since
        # set): then the heartbeat may relieve it, holding this; the main thread takes
        # its turn back as the job's code returns.
        self._turn = threading.Lock()
        self._executing_since: float | None = None
        self._batch_head: ManagedJob | None = None
        self._debug = False
        self._batch_at = 0.0  # when it was claimed (monotonic clock)
        self._recheck_after = options.lease / 2  # see _still_mine
        self._signals = Signals(options.graceful_shutdown_timeout, self._in_flight)
        self._memory = MemoryLimit(options.guarantee_memory, options.max_rss)
        self._heartbeat = Heartbeat(
            store,
            self._holding,
            lambda: self.jobs_processed,
            self._in_flight,
            self._signals,
            lease=options.lease,
            check_health=options.check_health,
            disown=lambda: self._tell_running(None),
            relieve=self._relieve,
        )
        self._coroutines = Coroutines(store.wake)
        #: A coroutine job that must run alone (runs_alone), in flight (see _run).
        self._alone: Run | None = None
        #: Whether the last claim held a job that runs alone (see _claim_limit).
        self._claimed_alone = False
        #: The size of the next claim when prefetch is left to the worker (see _claim_limit;
        #: at concurrency > 1 a claim takes the free slots).
        adaptive = options.prefetch is None and options.concurrency == 1
        self._sizing = ClaimSize() if adaptive else None
        #: A job just ran slow: the jobs this worker sized its claim for wait too long.
        self._ran_slow = False
        self._running_hook: Callable[[int | None], None] | None = None
        self._raised_hook: Callable[[ManagedJob, BaseException], None] | None = None
        self._unknown_types: set[str] = set()  # said once each, see _hand_back
        # A claim failed: its commit may have gone through unseen (see _hand_back_unseen).
        self._unseen_claims = False
        # Periodic jobs of its queues (a burst worker, which drains, schedules none).
        self._scheduler = None if options.exit_if_no_jobs else Scheduler(store, self._queues)

    @classmethod
    def with_options(cls, store: Store, options: WorkerOptions) -> Worker:
        """A Worker with these options (as `liteq work` makes its workers)."""
        return cls(store, **dataclasses.asdict(options))

    # -- control -------------------------------------------------------------
    def stop(self, exit_status: int = EXIT_OK) -> None:
        """Ask the worker to finish its current job and return from start(). Thread-safe."""
        self._signals.request_stop(exit_status)
        self.store.wake()

    def start(
        self,
        *,
        ready: Callable[[], None] | None = None,
        running: Callable[[int | None], None] | None = None,
        raised: Callable[[ManagedJob, BaseException], None] | None = None,
    ) -> int:
        """Run jobs until stopped; return 0 (stopped or drained), 1 (memory), 2 (code
        changed), 3 (a signal), 4 (the queue file was deleted or replaced) or 5 (the queue
        file is damaged).

        For a supervisor: `ready()` is called once the worker has registered and is about
        to claim its first job; `running(job_id)` as each job starts and ends, with the id
        of the one job in flight, SEVERAL (-1) while more are, None while none is (it must
        be cheap: it runs on every job). `raised(mjob, exc)` is called when a job's code
        raised, once its failure is recorded (liteq.testing.drain re-raises it).
        """
        self._running_hook = running
        self._raised_hook = raised
        options = self.options
        self._signals.reset()
        if options.nice:
            os.nice(options.nice)
        owner = make_owner()
        code = CodeWatch() if options.check_code else None
        began = time.monotonic()
        if options.handle_signals:
            self._signals.install()
        try:
            try:
                # Under a supervisor (told the running job) it watches the memory instead.
                max_rss = options.max_rss if running is None else None
                self._heartbeat.start(self._info(owner), max_rss=max_rss)
                if options.jitter and not options.exit_if_no_jobs:
                    self._sleep(random.uniform(0, min(0.5, options.wakeup_every / 10)))  # noqa: S311
                log.info(
                    "worker %s started (queues: %s)", owner, ", ".join(self._queues or ()) or "all"
                )
                if ready is not None:
                    ready()
                try:
                    return self._loop(owner, code, began)
                finally:
                    self._settle(owner)
            finally:
                self._heartbeat.stop()
                self._unregister(owner)
        except (StoreMoved, StoreCorrupt) as exc:
            log.error("the worker stops: %s", exc)
            return EXIT_STORE_MOVED if isinstance(exc, StoreMoved) else EXIT_STORE_CORRUPT
        finally:
            self._signals.restore()

    def _info(self, owner: str) -> WorkerInfo:
        """This worker, for the store's registry of live workers (`liteq status`)."""
        identity = parse_owner(owner)
        now = self.store.clock()
        return WorkerInfo(
            owner=owner,
            host=identity.host if identity else "",
            pid=os.getpid(),
            queues=None if self._queues is None else tuple(self._queues),
            started_at=now,
            beat_at=now,
            lease=self.options.lease,
        )

    def _unregister(self, owner: str) -> None:
        try:
            self.store.unregister_worker(owner)
        except StoreError as exc:  # (its row goes once silent for three leases)
            log.debug("could not unregister: %s", exc)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._signals.stop_requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _tell_running(self, job_id: int | None) -> None:
        """Tell the supervisor which job runs now (so that a death is blamed on it)."""
        if self._running_hook is not None:
            self._running_hook(job_id)

    def _tell_in_flight(self) -> None:
        """_tell_running of the runs in flight now (no supervisor: nothing to work out)."""
        if self._running_hook is not None:
            self._running_hook(self._in_flight.running())

    def _holding(self) -> list[ManagedJob]:
        """The jobs whose leases this worker holds (for the heartbeat)."""
        with self._lock:
            return [*self._held, *self._acks, *(run.mjob for run in self._in_flight.now())]

    # -- the loop ----------------------------------------------------------------
    def _loop(self, owner: str, code: CodeWatch | None, began: float) -> int:
        try:
            status = self._claim_and_run(owner, code, began)
        except BaseException:
            self._coroutines.close()  # (a no-op while any is in flight)
            raise
        self._finish_coroutines()
        return status

    def _claim_and_run(self, owner: str, code: CodeWatch | None, began: float) -> int:
        options, signals, coroutines = self.options, self._signals, self._coroutines
        limits_due = 0.0  # (limits asked each MEMORY_CHECK_EVERY, not each job: they cost calls)
        while not signals.stop_requested:
            self._record_coroutines()
            now = time.monotonic()
            if options.max_time is not None and now - began >= options.max_time:
                log.info("max_time of %ss reached", options.max_time)
                return EXIT_OK
            if now >= limits_due:
                limits_due = now + MEMORY_CHECK_EVERY
                short = self._memory.exceeded()
                if short is not None:
                    log.warning("%s: exiting so a fresh worker can start", short)
                    return EXIT_MEMORY
                changed = code.changed() if code is not None else None
                if changed is not None:
                    log.info(
                        "source file %s changed: exiting to restart with the new code", changed
                    )
                    return EXIT_CODE_CHANGED
            if self._scheduler is not None:  # (cheap until its next slot is due)
                self._patiently("enqueuing periodic jobs", self._scheduler.run_due)
            free = options.concurrency - coroutines.count
            if free <= 0 or self._alone is not None:
                # Every slot taken, or a job that must run alone (runs_alone) is in flight:
                # wait for a coroutine job to end.
                self._record_coroutines(wait=0.1)
                continue
            left = None
            if options.exit_after_n_jobs is not None:
                left = options.exit_after_n_jobs - self.jobs_processed - coroutines.count
                if left <= 0:
                    if coroutines.count:
                        self._record_coroutines(wait=0.1)
                        continue
                    log.info("ran %d jobs: exiting", self.jobs_processed)
                    return EXIT_OK
            if not self._held:
                limit = self._claim_limit(free)
                if left is not None:
                    limit = min(limit, left)
                held = self._complete_and_claim(owner, limit)
                if held is None:  # the store failed and the worker is stopping
                    break
                if not held:
                    if options.exit_if_no_jobs and not coroutines.count:
                        return EXIT_OK
                    # A coroutine job that ends wakes the wait (its slot is free again); one
                    # that ended during the claim rang before the claim saw nothing: look.
                    if not coroutines.ended():
                        self._patiently(
                            "waiting for jobs", lambda: self._idle(self._idle_timeout(), code)
                        )
                    continue
                if self._sizing is not None:
                    timed = any(m.max_runtime is not None for m in held)
                    self._sizing.claimed(limit, len(held), timed)
                if options.concurrency > 1:
                    held = self._keep_one_alone(held)
                with self._lock:
                    self._held = held
                self._batch_head = held[0]
                self._debug = log.isEnabledFor(logging.DEBUG)  # (once a batch, not a job)
                self._batch_at = time.monotonic()
                self._heartbeat.claimed()
            mjob = self._held[0]
            record = mjob.record
            crashes = record.crashes
            if coroutines.count and runs_alone(mjob):
                # It was in flight at two deaths: it runs alone (once the loop's jobs have
                # ended), so that a death while it runs is its doing alone.
                self._record_coroutines(wait=0.1)
                continue
            with self._lock:
                self._held.pop(0)
            # Finished jobs do not wait on a slow one; nor on one that took a worker down
            # before and may again: its crash would re-queue them, to run once more.
            # (Nor on one with max_runtime: a kill past it would re-run them.)
            if self._acks and (
                time.monotonic() - self._acks_since > ACK_DELAY
                or crashes
                or record.max_runtime is not None
            ):
                self._flush_acks()
            if crashes and self._held and self._sizing is not None:
                self._hand_back_held()
            if not self._still_mine(mjob):
                continue
            self._run(mjob)
            if self._ran_slow and self._held:
                self._hand_back_held()
        return signals.exit_status

    def _claim_limit(self, free: int) -> int:
        """How many jobs the next claim may take: at concurrency 1, `prefetch`, or if it is
        unset as many as recent claims and runs say can start soon (ClaimSize); else the
        free slots, while the jobs claimed last could all run side by side (one at a time
        after a plain job or one that runs alone: this worker runs those one by one, and
        must not hold many that other processes could be running)."""
        if self.options.concurrency == 1:
            if self._sizing is not None:
                return self._sizing.next()
            return self.options.prefetch or 1  # (set, when there is no ClaimSize)
        return 1 if self._claimed_alone else free

    def _hand_back_held(self) -> None:
        """Hand back the jobs held in a batch the worker sized itself (no attempt used):
        after a slow job, so that none waits behind the next slow one while other workers
        could run it; before a job that took a worker down before, so that should it do
        so again it was the one job held, and its death is blamed on it even where no
        supervisor saw which job ran (see rescue.py)."""
        with self._lock:
            held, self._held = self._held, []
        if self._patiently("handing back held jobs", lambda: self.store.release(held)) is None:
            with self._lock:  # stopping: _settle hands them back
                self._held = held

    def _relieve(self) -> None:
        """From the heartbeat's thread, while a job's code has run past RELIEF_AFTER in a
        batch the worker sized itself: hand back the jobs held behind it (no attempt used)
        and record the completions before it, so that neither waits on a job that may run
        for minutes, or hang."""
        since = self._executing_since
        if self._sizing is None or since is None or time.monotonic() - since < RELIEF_AFTER:
            return
        with self._lock:
            if not self._held and not self._acks:
                return
        if not self._turn.acquire(blocking=False):
            return
        try:
            if self._executing_since is None:  # (its code returned meanwhile)
                return
            with self._lock:
                held, self._held = self._held, []
                acks = list(self._acks)
            try:
                lost = self.store.complete_many(acks) if acks else []
                self._forget_acks(acks, lost)  # (none was added meanwhile: a job's code runs)
                released = self.store.release(held) if held else 0
            except StoreError as exc:
                log.warning("relieving the batch behind a long job failed: %s", exc)
                with self._lock:  # (still leased and renewed; handed back at the end)
                    self._held = [*held, *self._held]
                return
            for error in lost:
                log.warning("%s; its result is dropped", error)
            log.info(
                "a job has run for over %g s: handed back %d held job(s), recorded %d done",
                RELIEF_AFTER,
                released,
                len(acks),
            )
        finally:
            self._turn.release()

    def _keep_one_alone(self, held: list[ManagedJob]) -> list[ManagedJob]:
        """Of a claim at concurrency > 1, hand back at once (no attempt used) the jobs past
        the first that run alone (plain jobs, and those that must: runs_alone):
        this worker would run them one by one while other processes might be idle."""
        alone = [m for m in held if runs_alone(m) or m.job is None or not is_coroutine_job(m.job)]
        self._claimed_alone = bool(alone)
        extra = alone[1:]
        if not extra:
            return held
        if self._patiently("handing back plain jobs", lambda: self.store.release(extra)) is None:
            return held  # stopping: _settle hands them back
        kept = {id(m) for m in extra}
        return [m for m in held if id(m) not in kept]

    def _record_coroutines(self, wait: float = 0.0) -> None:
        """Record the outcomes of the coroutine jobs that ended (waiting up to `wait`
        seconds for one)."""
        if self._coroutines.count:
            for outcome in self._coroutines.outcomes(wait):
                self._finish(outcome)

    def _finish_coroutines(self) -> None:
        """On the way out: the coroutine jobs in flight end (a signalled stop's graceful
        timeout cancels them, as it interrupts a plain job), and are recorded."""
        coroutines = self._coroutines
        if coroutines.count:
            log.info("waiting for %d coroutine job(s) in flight", coroutines.count)
        while coroutines.count:
            self._record_coroutines(wait=0.1)
        coroutines.close()

    def _still_mine(self, mjob: ManagedJob) -> bool:
        """Before a prefetched job starts: is it still this worker's to run?

        The first job of a batch was claimed just now. A later one is checked against the
        store when it has been held past HELD_FRESH (an operator may have deleted it), or
        the leases were not renewed lately (the process was paused, say), and gets its real
        start time recorded when max_runtime is to count from it.
        """
        lost = self._heartbeat.lost
        if lost and (mjob.id, mjob.attempts) in lost:
            pass  # (a renewal found its lease gone)
        elif mjob.record.started_at is not None and (
            mjob is self._batch_head
            or (
                (now := time.monotonic()) - self._heartbeat.renewed <= self._recheck_after
                and now - self._batch_at <= HELD_FRESH
            )
        ):
            return True  # (with no started_at, its max_runtime clock starts now)
        else:
            started = self._patiently(
                f"recording the start of job {mjob.id}", lambda: self.store.mark_started(mjob)
            )
            if started is None:  # the store failed and the worker is stopping: hand it back
                with self._lock:
                    self._held.insert(0, mjob)
                return False
            if started:
                return True
        log.warning("prefetched job %d is no longer this worker's: not run here", mjob.id)
        return False

    def _settle(self, owner: str) -> None:
        """On the way out: hand back jobs claimed but never started (those of a claim
        whose commit went through unseen too), acknowledge the done."""
        with self._lock:
            held, self._held = self._held, []
        if held:
            released = self._patiently("handing back jobs", lambda: self.store.release(held))
            if released:
                log.info("handed back %d prefetched job(s) that had not started", released)
        self._flush_acks()
        if self._unseen_claims:
            self._hand_back_unseen(owner, [])

    def _complete_and_claim(self, owner: str, limit: int) -> list[ManagedJob] | None:
        """Record the finished jobs and claim the next in one transaction (None: stopping)."""
        acks = self._acks  # they stay there, leased, until recorded

        def claim() -> tuple[list[LeaseLost], list[ManagedJob]]:
            try:
                return self.store.complete_and_claim(
                    acks, owner, self._queues, self.options.lease, limit
                )
            except StoreError:
                self._unseen_claims = True  # (a claim that failed may yet have committed)
                raise

        outcome = self._patiently(functools.partial(_claiming, acks), claim)
        if outcome is None:
            return None
        lost, held = outcome
        if acks:
            self._forget_acks(acks, lost)
        for error in lost:
            log.warning("%s; its result is dropped", error)
        if self._unseen_claims:
            self._hand_back_unseen(owner, held)
        return held

    def _hand_back_unseen(self, owner: str, held: list[ManagedJob]) -> None:
        """After a claim that failed: hand back at once what it claimed if its commit went
        through unseen (the connection dropped during or after it, or SQLite failed after
        COMMIT). Those jobs are RUNNING under this worker's owner, yet not running here, nor
        held (`held`: claimed since, not started) or awaiting acknowledgement: left alone,
        they would wait for their lease, then be rescued as if this worker had died (a
        crash counted against each). A plain release, fenced on each run as the store has
        it: no attempt used, no crash counted, and none of them is in the prefetch buffer,
        so none runs here while it may run elsewhere."""
        with self._lock:
            mine = {m.id for m in (*held, *self._held, *self._acks)}
            mine.update(run.mjob.id for run in self._in_flight)
        strays = self._patiently(
            "looking for jobs claimed by a commit whose reply was lost",
            lambda: [m for m in self.store.held_by(owner) if m.id not in mine],
        )
        if strays is None:  # the worker is stopping: _settle tries again
            return
        if strays:
            released = self._patiently(
                "handing back jobs claimed unseen", lambda: self.store.release(strays)
            )
            if released is None:
                return
            for mjob in strays:
                if mjob.status is Status.QUEUED:  # (one no longer ours was left alone)
                    log.warning(
                        "job %d: claimed by a commit whose reply was lost: handed back "
                        "unstarted (no attempt used)",
                        mjob.id,
                    )
        self._unseen_claims = False

    def _flush_acks(self) -> None:
        acks = self._acks  # (as in _complete_and_claim: only this thread adds to it)
        if acks:
            lost = self._patiently(
                "recording completed jobs", lambda: self.store.complete_many(acks)
            )
            if lost is not None:
                self._forget_acks(acks, lost)
            for error in lost or []:
                log.warning("%s; its result is dropped", error)

    def _forget_acks(self, recorded: list[ManagedJob], lost: Sequence[LeaseLost]) -> None:
        """Acknowledgements recorded: counted as completed (those lost aside, run again
        elsewhere), and no longer held."""
        completed = recorded
        if lost:
            gone = {error.job_id for error in lost}
            completed = [mjob for mjob in recorded if mjob.id not in gone]
        for queue, n in Counter(mjob.record.queue for mjob in completed).items():
            self._heartbeat.count(queue, completed=True, n=n)
        # They are the first of _acks: only the worker's main thread adds to it.
        with self._lock:
            self._acks = self._acks[len(recorded) :]

    def _idle(self, timeout: float, code: CodeWatch | None = None) -> None:
        # In slices, so a signal's stop request is seen within a tenth of a second.
        deadline = time.monotonic() + timeout
        while not self._signals.stop_requested and (left := deadline - time.monotonic()) > 0:
            if self.store.wait_for_jobs(self._queues, min(left, 0.1)):
                return
            # The code check (a stat of every module's file) runs here, while idle, rather
            # than between a wake-up and the claim; the loop acts on a change.
            if code is not None and code.changed() is not None:
                return

    def _idle_timeout(self) -> float:
        timeout = self.options.wakeup_every
        if self.options.jitter:
            timeout *= random.uniform(0.8, 1.2)  # noqa: S311 - spreads re-checks, not crypto
        due = self.store.next_run_at(self._queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.store.clock()))
        if self._scheduler is not None:  # idle workers wake for the next slot
            timeout = min(timeout, self._scheduler.wait())
        return timeout

    # -- one job -------------------------------------------------------------
    def _hand_back(self, mjob: ManagedJob) -> None:
        """A job of a type no class here knows: a deployment mismatch, not the job's fault.
        It goes back, using no attempt, for a worker that knows its type; the longer it has
        waited, the longer before it is tried again (up to UNKNOWN_TYPE_WAIT)."""
        if mjob.job_type not in self._unknown_types:
            self._unknown_types.add(mjob.job_type)
            log.warning("%s; its jobs wait for a worker that knows their type", mjob.decode_error)
        waited = self.store.clock() - mjob.created_at.timestamp()
        delay = min(max(waited / 2, 1.0), UNKNOWN_TYPE_WAIT)
        error = f"{WAITS_FOR_ITS_TYPE}: {mjob.decode_error}"
        self._patiently(
            f"handing back job {mjob.id}",
            lambda: self.store.release([mjob], delay=delay, error=error),
        )

    def _run(self, mjob: ManagedJob) -> None:
        """Run a claimed job: a plain one here and now, a coroutine job on the loop (it is
        recorded when it ends, by _record_coroutines)."""
        job = mjob.job
        if job is None:
            if mjob.unknown_type:
                self._hand_back(mjob)
                return
            log.error("job %d cannot run: %s", mjob.id, mjob.decode_error)
            self._ack(
                mjob, lambda: self.store.fail(mjob, f"cannot run: {mjob.decode_error}", retry=False)
            )
            self._heartbeat.count(mjob.queue, completed=False)
            self.jobs_processed += 1
            return
        signals, run = self._signals, Run(mjob)
        coroutine = _is_coroutine_job(job)
        if coroutine:
            self._coroutines.start(run, job)  # (run.cancel set: stops cancel its task)
            if runs_alone(mjob):
                self._alone = run
        self._in_flight.add(run)
        self._tell_in_flight()
        if self._debug:
            log.debug("job %d (%s) started, attempt %d", mjob.id, describe(mjob), mjob.attempts)
        max_runtime = mjob.record.max_runtime
        if max_runtime is not None or signals.stop_requested:
            signals.job_starts(run, max_runtime)
        if coroutine:
            return
        try:
            try:
                run.executing = True
                began = self._executing_since = time.monotonic()
                try:
                    outcome = Outcome(run, result=job.run(mjob))
                finally:
                    run.executing = False
                    self._executing_since = None
                    with self._turn:  # (a relief under way ends first)
                        pass
                    if self._sizing is not None:
                        self._ran_slow = self._sizing.ran(time.monotonic() - began)
            finally:
                signals.job_ends(run)
                try:
                    job.cleanup()
                except Exception:
                    log.exception("cleanup() of job %d raised", mjob.id)
        except (Exception, SystemExit, Interrupted) as exc:
            outcome = Outcome(run, error=exc, traceback=traceback.format_exc())
        except BaseException:
            # KeyboardInterrupt and the like: hand the job back untouched, then stop.
            self._ack(mjob, lambda: self.store.fail(mjob, "interrupted", mulligan=True))
            self._in_flight.discard(run)
            raise
        self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        """Record how a job's attempt ended (a plain job's, or a coroutine job's)."""
        run = outcome.run
        mjob, signals, error = run.mjob, self._signals, outcome.error
        if run.cancel is not None:
            signals.job_ends(run)
        try:
            if isinstance(error, Interrupted):
                self._interrupted(mjob, error)
            elif error is not None:
                message = f"{type(error).__name__}: {error}"
                status = self._ack(mjob, lambda: self.store.fail(mjob, message, outcome.traceback))
                self._heartbeat.count(mjob.queue, completed=False)
                log.error(
                    "job %d (%s) failed on attempt %d/%d: %s -> %s\n%s",
                    mjob.id,
                    describe(mjob),
                    mjob.attempts,
                    mjob.max_attempts,
                    message,
                    status.value if status else "lost",
                    outcome.traceback.rstrip(),
                )
                if self._raised_hook is not None:
                    self._raised_hook(mjob, error)
            else:
                self._returned(mjob, outcome.result)
        finally:
            # The job's code has unwound: a hard exit armed for it is moot.
            run.hard_exit_at = None
            if run is self._alone:
                self._alone = None
            self._in_flight.discard(run)
            self._tell_in_flight()
            self.jobs_processed += 1

    def _interrupted(self, mjob: ManagedJob, stop: Interrupted) -> None:
        """A job the worker stopped (a signal, max_runtime, a lost lease, max_rss), once its
        code has unwound: only now may it be handed back."""
        death = stop.death
        if death is not None:  # it took the worker past max_rss: a crash of the job
            # (A death shared with other jobs in flight is never the last: see rescue.py.)
            max_crashes = MULLIGAN_CAP if stop.shared else self.options.max_crashes
            status = self._ack(mjob, lambda: self.store.crash(mjob, death, max_crashes))
            self._heartbeat.count(mjob.queue, completed=False)
            log.error(
                "job %d (%s): the worker was %s: %s; exiting",
                mjob.id,
                describe(mjob),
                death,
                status.value if status else "lost",
            )
            self._signals.request_stop(EXIT_MEMORY)
            return
        reason = f"interrupted: {stop}"
        self._ack(mjob, lambda: self.store.fail(mjob, reason, mulligan=True))
        self._heartbeat.count(mjob.queue, completed=False)
        log.warning("job %d (%s) %s: re-queued with a mulligan", mjob.id, describe(mjob), reason)
        if stop.stop_worker:
            self._signals.request_stop()

    def _returned(self, mjob: ManagedJob, result: object) -> None:
        """A job's run returned `result`."""
        kept = mjob.record.keep_result is not None
        if kept and not isinstance(result, Status) and not inspect.isawaitable(result):
            encoded = encode_result(result)  # before the acknowledgement, which stores it
            if isinstance(encoded, ResultRefused):
                result = encoded
            else:
                mjob.replace_record(evolve(mjob.record, result=encoded))
                result = None
        if result is Status.WAIT_ASYNC:
            self._ack(mjob, lambda: self.store.wait_async(mjob))
        elif result is None or result is Status.COMPLETED:
            # Recorded with the next claim, in its transaction (which comes at once
            # when no claimed job is waiting) or, mid-batch, after ACK_DELAY.
            with self._lock:
                if not self._acks:
                    self._acks_since = time.monotonic()
                self._acks.append(mjob)
        else:
            message = str(result) if isinstance(result, ResultRefused) else bad_result(result)
            self._ack(mjob, lambda: self.store.fail(mjob, message, retry=False))
            self._heartbeat.count(mjob.queue, completed=False)
            log.error("job %d (%s): %s", mjob.id, describe(mjob), message)
        if self._debug:
            log.debug("job %d (%s) returned %r", mjob.id, describe(mjob), result)

    def _ack(self, mjob: ManagedJob, action: Callable[[], object]) -> Status | None:
        """Record a job's outcome; its new status, or None if it was not recorded."""

        def record() -> bool:
            action()
            return True  # (the action's own result may be None)

        try:
            if not self._patiently(f"recording the outcome of job {mjob.id}", record):
                return None
        except LeaseLost as exc:
            log.warning("job %d: %s; its result is dropped", mjob.id, exc)
            return None
        return mjob.status

    def _patiently(self, what: str | Callable[[], str], action: Callable[[], T]) -> T | None:
        """Run a store operation; while the store fails (disk full, locked for too long, I/O
        error), log it and retry with backoff. Returns None if the worker is asked to stop
        meanwhile: a job whose outcome was not recorded stays RUNNING and is re-queued once
        this worker is gone (at least once, never twice at a time). A moved or damaged
        file is not transient: it is raised."""
        delay = STORE_RETRY_FIRST
        while True:
            try:
                return action()
            except (StoreMoved, StoreCorrupt):
                raise
            except StoreError as exc:
                what = what if isinstance(what, str) else what()
                if self._signals.stop_requested:
                    log.error("%s failed (%s); giving up, the worker is stopping", what, exc)
                    return None
                log.error("%s failed (%s); retrying in %.1fs", what, exc, delay)
                self._sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)


#: Per job class whose run is its class's: whether it is a coroutine job (inspect's answer
#: costs a few microseconds, on every job of a batch).
_COROUTINE_CLASSES: dict[type, bool] = {}


def _is_coroutine_job(job: Job) -> bool:
    """is_coroutine_job(job), once per class (unless the job has a run of its own)."""
    if "run" in getattr(job, "__dict__", ()):
        return is_coroutine_job(job)
    known = _COROUTINE_CLASSES.get(type(job))
    if known is None:
        known = _COROUTINE_CLASSES[type(job)] = is_coroutine_job(job)
    return known


def runs_alone(mjob: ManagedJob) -> bool:
    """Whether a job must run with no other in flight beside it (see RUNS_ALONE_AFTER)."""
    return mjob.record.crashes >= RUNS_ALONE_AFTER


def _claiming(acks: list[ManagedJob]) -> str:
    """What _complete_and_claim does, for a log line when it fails."""
    if not acks:
        return "claiming jobs"
    ids = ", ".join(str(m.id) for m in acks[:5]) + (", …" if len(acks) > 5 else "")
    return f"recording the outcome of job{'s' if len(acks) > 1 else ''} {ids} and claiming"
