"""Worker: runs jobs from a store in this process, one at a time."""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TypeVar

import psutil

from liteq.errors import LeaseLost, StoreCorrupt, StoreError, StoreMoved
from liteq.managed import ManagedJob, Status
from liteq.options import check_text
from liteq.process import make_owner
from liteq.stores._base import BaseStore

log = logging.getLogger("liteq.worker")
T = TypeVar("T")

#: Exit statuses of Worker.start(); `liteq work` turns them into process exits.
EXIT_OK, EXIT_MEMORY, EXIT_CODE_CHANGED, EXIT_SIGNAL = 0, 1, 2, 3
#: The queue file was deleted or replaced under the worker / is damaged: restarting the
#: worker cannot help, so `liteq work` stops.
EXIT_STORE_MOVED, EXIT_STORE_CORRUPT = 4, 5

DEFAULT_GUARANTEE_MEMORY = 64 * 1024 * 1024
#: How often the memory pre-flight really reads memory figures (it is cheap, not free).
MEMORY_CHECK_EVERY = 0.1
#: While the store fails, a worker retries after this long, doubling up to the max.
STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.5, 30.0
#: With prefetch, the longest a completion waits for its batch before a job starts.
ACK_DELAY = 0.05
#: After a job should have been interrupted, how long before the process exits hard.
HARD_EXIT_GRACE = 5.0
#: How often a worker asks its store for conditions an operator should hear of.
HEALTH_EVERY = 10.0

_SIGNALS = ("SIGTERM", "SIGQUIT", "SIGINT", "SIGHUP", "SIGALRM")


class Interrupted(BaseException):
    """Raised inside a running job to stop it: shutdown timeout, second INT, or max_runtime.

    A BaseException, so the job's own `except Exception` does not swallow it.
    """

    def __init__(self, reason: str, *, stop_worker: bool) -> None:
        super().__init__(reason)
        self.stop_worker = stop_worker


class CodeWatch:
    """Notices when the source file of any imported module changes on disk."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._mtimes: dict[str, int] = {}
        self._next = 0.0
        self._scan(record=True)

    def _scan(self, *, record: bool) -> str | None:
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if not isinstance(path, str):
                continue
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            seen = self._mtimes.get(path)
            if seen is None or record:
                self._mtimes[path] = mtime  # newly imported: its code is current
            elif seen != mtime:
                return path
        return None

    def changed(self) -> str | None:
        """The path of a changed source file, checked at most once per `every` seconds."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.every
        return self._scan(record=False)


class Worker:
    """Runs jobs from `store` in this process until stopped or an exit condition is met.

        liteq.Worker(store, queues=["mail"], exit_if_no_jobs=True).start()

    Args:
        queues: the queues to serve (default: all).
        wakeup_every: seconds between re-checks when idle (new jobs wake it sooner).
        exit_if_no_jobs: return once no job in its queues is due now.
        exit_after_n_jobs / max_time: return after that many jobs / seconds.
        guarantee_memory: return 1 before a job if less available memory would remain.
        graceful_shutdown_timeout: seconds a signalled worker lets its job finish.
        jitter: randomize start-up and idle re-checks (never the pick-up of a new job).
        nice: add this to the process's niceness.
        lease: seconds a claim is valid; renewed while the job runs.
        prefetch: claim up to this many jobs per transaction and acknowledge completions
            in batches of as many: far faster for short jobs. Prefetched jobs are RUNNING
            and leased by this worker until they run; on a stop, those not started are
            handed back; on a crash, they are rescued like any running job (at least once).
        check_code: return 2 when an imported module's source changes.
        check_health: log, every 10 s, conditions of the store an operator should hear of
            (a WAL file that a long reader keeps growing, say); `liteq work` does it
            in its supervisor instead.
        max_rss: return 1 before a job once this process uses more bytes than this.
        handle_signals: in the main thread, handle TERM/QUIT/INT/HUP as described in the
            README and enforce max_runtime with SIGALRM.
    """

    def __init__(
        self,
        store: BaseStore,
        queues: Sequence[str] | None = None,
        wakeup_every: float = 5.0,
        exit_if_no_jobs: bool = False,
        exit_after_n_jobs: int | None = None,
        max_time: float | None = None,
        guarantee_memory: int = DEFAULT_GUARANTEE_MEMORY,
        graceful_shutdown_timeout: float = 5.0,
        jitter: bool = True,
        nice: int | None = None,
        lease: float = 30.0,
        check_code: bool = True,
        check_health: bool = True,
        max_rss: int | None = None,
        handle_signals: bool = True,
        prefetch: int = 1,
    ) -> None:
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of names, not the string {queues!r}")
        for queue in queues or ():
            check_text(queue, "a queue name")
        if wakeup_every <= 0:
            raise ValueError(f"wakeup_every must be positive, not {wakeup_every!r}")
        if exit_after_n_jobs is not None and exit_after_n_jobs < 1:
            raise ValueError(f"exit_after_n_jobs must be at least 1, not {exit_after_n_jobs!r}")
        if lease <= 0:
            raise ValueError(f"lease must be positive, not {lease!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int of at least 1, not {prefetch!r}")
        self.store = store
        self.queues = None if queues is None else list(queues)
        self.wakeup_every = wakeup_every
        self.exit_if_no_jobs = exit_if_no_jobs
        self.exit_after_n_jobs = exit_after_n_jobs
        self.max_time = max_time
        self.guarantee_memory = guarantee_memory
        self.graceful_shutdown_timeout = graceful_shutdown_timeout
        self.jitter = jitter
        self.nice = nice
        self.lease = lease
        self.check_code = check_code
        self.check_health = check_health
        self.max_rss = max_rss
        self.handle_signals = handle_signals
        self.prefetch = prefetch
        self._held: list[ManagedJob] = []  # claimed, not yet started
        self._acks: list[ManagedJob] = []  # completed, not yet acknowledged
        self._acks_since = 0.0
        self._signals_installed = False
        self._batch_head: ManagedJob | None = None
        self._leases_renewed = 0.0
        #: Jobs this worker has run (any outcome).
        self.jobs_processed = 0
        self._stop = threading.Event()
        self._exit_status = EXIT_OK
        self._current: ManagedJob | None = None
        self._current_lock = threading.Lock()
        # Set by signal handlers (plain attributes: a handler must not take locks).
        self._stop_requested = False
        self._ints = 0
        self._in_job = False
        self._graceful_deadline: float | None = None
        self._runtime_deadline: float | None = None
        self._hard_exit_at: float | None = None
        self._memory_checked = 0.0

    # -- control -------------------------------------------------------------
    def stop(self, exit_status: int = EXIT_OK) -> None:
        """Ask the worker to finish its current job and return from start(). Thread-safe."""
        self._exit_status = exit_status
        self._stop_requested = True
        self.store.wake()

    @property
    def current_job(self) -> ManagedJob | None:
        """The job running now, if any."""
        return self._current

    def start(self) -> int:
        """Run jobs until stopped; return 0 (stopped or drained), 1 (memory), 2 (code
        changed), 3 (a signal), 4 (the queue file was deleted or replaced) or 5 (the queue
        file is damaged)."""
        self._stop.clear()
        self._stop_requested = False
        self._ints = 0
        self._exit_status = EXIT_OK
        if self.nice:
            os.nice(self.nice)
        owner = make_owner()
        code = CodeWatch() if self.check_code else None
        began = time.monotonic()
        previous = self._install_signal_handlers()
        self._signals_installed = bool(previous)
        heartbeat = threading.Thread(target=self._heartbeat, name="liteq-heartbeat", daemon=True)
        heartbeat.start()
        try:
            if self.jitter and not self.exit_if_no_jobs:
                self._sleep(random.uniform(0, min(0.5, self.wakeup_every / 10)))  # noqa: S311
            log.info("worker %s started (queues: %s)", owner, self.queues or "all")
            try:
                try:
                    return self._loop(owner, code, began)
                finally:
                    self._settle()
            except (StoreMoved, StoreCorrupt) as exc:
                log.error("the worker stops: %s", exc)
                return EXIT_STORE_MOVED if isinstance(exc, StoreMoved) else EXIT_STORE_CORRUPT
        finally:
            self._stop.set()
            heartbeat.join()
            self._restore_signal_handlers(previous)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    # -- signals -------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, object]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        handlers = {
            signal.SIGTERM: self._on_term,
            signal.SIGQUIT: self._on_term,
            signal.SIGINT: self._on_int,
            signal.SIGHUP: self._on_hup,
            signal.SIGALRM: self._on_alarm,
        }
        previous: dict[int, object] = {}
        for signum, handler in handlers.items():
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, object]) -> None:
        if previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what getsignal gave back

    def _request_stop(self, status: int) -> None:
        self._exit_status = status
        self._stop_requested = True

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._request_stop(EXIT_SIGNAL)
        if self._current is not None and self._graceful_deadline is None:
            self._graceful_deadline = time.monotonic() + self.graceful_shutdown_timeout
            self._arm_alarm()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self._ints += 1
        self._request_stop(EXIT_SIGNAL)
        if self._ints >= 2 and self._current is not None:
            self._interrupt("a second SIGINT asked to stop now", stop_worker=True)

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._request_stop(EXIT_SIGNAL)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self._graceful_deadline is not None and now >= self._graceful_deadline:
            self._interrupt(
                f"the job outlasted the graceful shutdown timeout of {self.graceful_shutdown_timeout}s",
                stop_worker=True,
            )
        elif self._runtime_deadline is not None and now >= self._runtime_deadline:
            self._interrupt("the job ran longer than its max_runtime", stop_worker=False)
        else:
            self._arm_alarm()

    def _arm_alarm(self) -> None:
        deadlines = [d for d in (self._graceful_deadline, self._runtime_deadline) if d is not None]
        if deadlines:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, min(deadlines) - time.monotonic()))

    def _interrupt(self, reason: str, *, stop_worker: bool) -> None:
        """Stop the running job by raising in it; if it is not in its code now, it is ending anyway."""
        if self._hard_exit_at is None:
            self._hard_exit_at = time.monotonic() + HARD_EXIT_GRACE
        if self._in_job:
            raise Interrupted(reason, stop_worker=stop_worker)

    def _loop(self, owner: str, code: CodeWatch | None, began: float) -> int:
        while not self._stop_requested:
            if self.max_time is not None and time.monotonic() - began >= self.max_time:
                log.info("max_time of %ss reached", self.max_time)
                return EXIT_OK
            if self.exit_after_n_jobs is not None and self.jobs_processed >= self.exit_after_n_jobs:
                log.info("ran %d jobs: exiting", self.jobs_processed)
                return EXIT_OK
            if self._memory_short():
                return EXIT_MEMORY
            changed = code.changed() if code is not None else None
            if changed is not None:
                log.info("source file %s changed: exiting to restart with the new code", changed)
                return EXIT_CODE_CHANGED
            if not self._held:
                limit = self.prefetch
                if self.exit_after_n_jobs is not None:
                    limit = min(limit, self.exit_after_n_jobs - self.jobs_processed)
                held = self._complete_and_claim(owner, limit)
                if held is None:  # the store failed and the worker is stopping
                    break
                if not held:
                    if self.exit_if_no_jobs:
                        return EXIT_OK
                    self._patiently("waiting for jobs", lambda: self._idle(self._idle_timeout()))
                    continue
                with self._current_lock:
                    self._held = held
                self._batch_head = held[0]
                self._leases_renewed = time.monotonic()
            with self._current_lock:
                mjob = self._held.pop(0)
            if self._acks and time.monotonic() - self._acks_since > ACK_DELAY:
                self._flush_acks()  # finished jobs do not wait on a slow one
            if not self._still_mine(mjob):
                continue
            self._run(mjob)
        return self._exit_status

    def _still_mine(self, mjob: ManagedJob) -> bool:
        """Before a prefetched job starts: is it still this worker's to run?

        The first job of a batch was claimed just now. A later one is checked against the
        store when the leases were not renewed lately (the process was paused, say), and
        gets its real start time recorded when max_runtime is to count from it.
        """
        if mjob._record.started_at is not None and (
            mjob is self._batch_head or time.monotonic() - self._leases_renewed <= self.lease / 2
        ):
            return True  # (with no started_at, its max_runtime clock starts now)
        if self.store.mark_started(mjob):
            return True
        log.warning("prefetched job %d is no longer this worker's: not run here", mjob.id)
        return False

    def _settle(self) -> None:
        """On the way out: hand back jobs claimed but never started, acknowledge the done."""
        with self._current_lock:
            held, self._held = self._held, []
        if held:
            released = self._patiently("handing back jobs", lambda: self.store.release(held))
            if released:
                log.info("handed back %d prefetched job(s) that had not started", released)
        self._flush_acks()

    def _complete_and_claim(self, owner: str, limit: int) -> list[ManagedJob] | None:
        """Record the finished jobs and claim the next in one transaction (None: stopping)."""
        acks = self._acks  # they stay there, leased, until recorded
        outcome = self._patiently(
            functools.partial(_claiming, acks),
            functools.partial(
                self.store.complete_and_claim, acks, owner, self.queues, self.lease, limit
            ),
        )
        if outcome is None:
            return None
        if acks:
            self._forget_acks(acks)
        lost, held = outcome
        for error in lost:
            log.warning("%s; its result is dropped", error)
        return held

    def _flush_acks(self) -> None:
        acks = self._acks  # (as in _complete_and_claim: only this thread adds to it)
        if acks:
            lost = self._patiently(
                "recording completed jobs", lambda: self.store.complete_many(acks)
            )
            if lost is not None:
                self._forget_acks(acks)
            for error in lost or []:
                log.warning("%s; its result is dropped", error)

    def _forget_acks(self, recorded: list[ManagedJob]) -> None:
        # They are the first of _acks: only this thread (the worker's) adds to it.
        with self._current_lock:
            self._acks = self._acks[len(recorded) :]

    def _idle(self, timeout: float) -> None:
        # In slices, so a signal's stop request is seen within a tenth of a second.
        deadline = time.monotonic() + timeout
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            if self.store.wait_for_jobs(self.queues, min(left, 0.1)):
                return

    def _memory_short(self) -> bool:
        now = time.monotonic()
        if now - self._memory_checked < MEMORY_CHECK_EVERY:
            return False
        self._memory_checked = now
        available = psutil.virtual_memory().available
        if available < self.guarantee_memory:
            log.warning(
                "only %d MiB of memory available (guarantee_memory is %d MiB): exiting so a "
                "fresh worker can start",
                available >> 20,
                self.guarantee_memory >> 20,
            )
            return True
        if self.max_rss is not None:
            rss = psutil.Process().memory_info().rss
            if rss > self.max_rss:
                log.warning(
                    "this worker uses %d MiB (max_rss is %d MiB): exiting so a fresh worker "
                    "can start",
                    rss >> 20,
                    self.max_rss >> 20,
                )
                return True
        return False

    def _idle_timeout(self) -> float:
        timeout = self.wakeup_every
        if self.jitter:
            timeout *= random.uniform(0.8, 1.2)  # noqa: S311 - spreads re-checks, not crypto
        due = self.store.next_run_at(self.queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.store.clock()))
        return timeout

    def _heartbeat(self) -> None:
        renew_at = time.monotonic() + self.lease / 3
        health_at = time.monotonic()
        while not self._stop.wait(0.5):
            if self._hard_exit_at is not None and time.monotonic() > self._hard_exit_at:
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
            with self._current_lock:
                mine = [*self._held, *self._acks]
                if self._current is not None:
                    mine.append(self._current)
            if mine:
                try:
                    kept = {id(m) for m in self.store.renew_leases(mine, self.lease)}
                except (StoreMoved, StoreCorrupt):
                    return  # the worker's loop meets it too, and stops
                except StoreError as exc:
                    log.error("renewing leases failed (%s); trying again shortly", exc)
                    renew_at = time.monotonic() + 1.0
                    continue
                self._leases_renewed = time.monotonic()
                for mjob in mine:  # (one finished meanwhile is no longer RUNNING here)
                    if id(mjob) not in kept and mjob.status is Status.RUNNING:
                        log.warning("job %d: lease lost; it was re-queued elsewhere", mjob.id)

    # -- one job -------------------------------------------------------------
    def _run(self, mjob: ManagedJob) -> None:
        job = mjob.job
        if job is None:
            log.error("job %d cannot run: %s", mjob.id, mjob.decode_error)
            self._ack(
                mjob, lambda: self.store.fail(mjob, f"cannot run: {mjob.decode_error}", retry=False)
            )
            self.jobs_processed += 1
            return
        with self._current_lock:
            self._current = mjob
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("job %d (%s) started, attempt %d", mjob.id, _name(mjob), mjob.attempts)
        if self._signals_installed and (mjob.max_runtime is not None or self._stop_requested):
            self._start_runtime_alarm(mjob)
        try:
            try:
                self._in_job = True
                try:
                    result = job.run(mjob)
                finally:
                    self._in_job = False
            finally:
                self._stop_alarms()
                try:
                    job.cleanup()
                except Exception:
                    log.exception("cleanup() of job %d raised", mjob.id)
        except Interrupted as exc:
            # The job's code has unwound: only now may it be handed back.
            reason = f"interrupted: {exc}"
            self._ack(mjob, lambda: self.store.fail(mjob, reason, mulligan=True))
            log.warning("job %d (%s) %s: re-queued with a mulligan", mjob.id, _name(mjob), reason)
            if exc.stop_worker:
                self._stop_requested = True
        except (Exception, SystemExit) as exc:
            message = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc()
            status = self._ack(mjob, lambda: self.store.fail(mjob, message, tb))
            log.error(
                "job %d (%s) failed on attempt %d/%d: %s -> %s\n%s",
                mjob.id,
                _name(mjob),
                mjob.attempts,
                mjob.max_attempts,
                message,
                status.value if status else "lost",
                tb.rstrip(),
            )
        except BaseException:
            # KeyboardInterrupt and the like: hand the job back untouched, then stop.
            self._ack(mjob, lambda: self.store.fail(mjob, "interrupted", mulligan=True))
            raise
        else:
            if result is Status.WAIT_ASYNC:
                self._ack(mjob, lambda: self.store.wait_async(mjob))
            elif result is None or result is Status.COMPLETED:
                # Recorded with the next claim, in its transaction (which comes at once
                # when no claimed job is waiting) or, mid-batch, after ACK_DELAY.
                with self._current_lock:
                    if not self._acks:
                        self._acks_since = time.monotonic()
                    self._acks.append(mjob)
            else:
                message = f"run() returned {result!r}; return None or Status.WAIT_ASYNC"
                self._ack(mjob, lambda: self.store.fail(mjob, message, retry=False))
                log.error("job %d (%s): %s", mjob.id, _name(mjob), message)
            if debug:
                log.debug("job %d (%s) returned %r", mjob.id, _name(mjob), result)
        finally:
            with self._current_lock:
                self._current = None
            self._hard_exit_at = None
            self.jobs_processed += 1

    def _start_runtime_alarm(self, mjob: ManagedJob) -> None:
        # (Both deadlines are None here: _stop_alarms cleared them after the last job.)
        self._graceful_deadline = None
        self._runtime_deadline = None
        if mjob.max_runtime is not None:
            self._runtime_deadline = time.monotonic() + mjob.max_runtime
        if self._stop_requested and self._exit_status == EXIT_SIGNAL:
            self._graceful_deadline = time.monotonic() + self.graceful_shutdown_timeout
        self._arm_alarm()

    def _stop_alarms(self) -> None:
        if self._graceful_deadline is not None or self._runtime_deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self._graceful_deadline = None
        self._runtime_deadline = None

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
        this worker is gone (at least once, never twice at a time)."""
        delay = STORE_RETRY_FIRST
        while True:
            try:
                return action()
            except (StoreMoved, StoreCorrupt):
                raise  # not transient: waiting cannot mend them
            except StoreError as exc:
                what = what if isinstance(what, str) else what()
                if self._stop_requested:
                    log.error("%s failed (%s); giving up, the worker is stopping", what, exc)
                    return None
                log.error("%s failed (%s); retrying in %.1fs", what, exc, delay)
                self._sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)


def report_health(store: BaseStore) -> None:
    """Log what the store says an operator should hear of (each condition once)."""
    try:
        for warning in store.check_health():
            log.warning("%s", warning)
    except StoreError as exc:  # (the worker's own loop meets it too, and says so)
        log.debug("checking the store's health failed: %s", exc)


def _claiming(acks: list[ManagedJob]) -> str:
    """What _complete_and_claim does, for a log line when it fails."""
    if not acks:
        return "claiming jobs"
    ids = ", ".join(str(m.id) for m in acks[:5]) + (", …" if len(acks) > 5 else "")
    return f"recording the outcome of job{'s' if len(acks) > 1 else ''} {ids} and claiming"


def _name(mjob: ManagedJob) -> str:
    """The job's description for a log line (computed only when a line is written)."""
    if mjob.job is None:
        return mjob.job_type
    try:
        return mjob.job.description()
    except Exception as exc:  # a broken description() must not break the worker
        return f"{mjob.job_type} (description() raised {type(exc).__name__})"
