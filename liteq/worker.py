"""Worker: runs jobs from a store in this process, one at a time."""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

import psutil

from liteq.errors import LeaseLost
from liteq.managed import ManagedJob, Status
from liteq.process import make_owner
from liteq.stores._base import BaseStore

log = logging.getLogger("liteq.worker")

#: Exit statuses of Worker.start(); `liteq work` turns them into process exits.
EXIT_OK, EXIT_MEMORY, EXIT_CODE_CHANGED, EXIT_SIGNAL = 0, 1, 2, 3

DEFAULT_GUARANTEE_MEMORY = 64 * 1024 * 1024


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
        check_code: return 2 when an imported module's source changes.
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
    ) -> None:
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of names, not the string {queues!r}")
        if wakeup_every <= 0:
            raise ValueError(f"wakeup_every must be positive, not {wakeup_every!r}")
        if exit_after_n_jobs is not None and exit_after_n_jobs < 1:
            raise ValueError(f"exit_after_n_jobs must be at least 1, not {exit_after_n_jobs!r}")
        if lease <= 0:
            raise ValueError(f"lease must be positive, not {lease!r}")
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
        #: Jobs this worker has run (any outcome).
        self.jobs_processed = 0
        self._stop = threading.Event()
        self._exit_status = EXIT_OK
        self._current: ManagedJob | None = None
        self._current_lock = threading.Lock()

    # -- control -------------------------------------------------------------
    def stop(self, exit_status: int = EXIT_OK) -> None:
        """Ask the worker to finish its current job and return from start(). Thread-safe."""
        self._exit_status = exit_status
        self._stop.set()
        self.store.wake()

    @property
    def current_job(self) -> ManagedJob | None:
        """The job running now, if any."""
        return self._current

    def start(self) -> int:
        """Run jobs until stopped; return 0 (stopped or drained), 1 (memory) or 2 (code changed)."""
        self._stop.clear()
        self._exit_status = EXIT_OK
        if self.nice:
            os.nice(self.nice)
        owner = make_owner()
        code = CodeWatch() if self.check_code else None
        began = time.monotonic()
        if self.jitter and not self.exit_if_no_jobs:
            self._stop.wait(random.uniform(0, min(0.5, self.wakeup_every / 10)))  # noqa: S311
        heartbeat = threading.Thread(target=self._heartbeat, name="liteq-heartbeat", daemon=True)
        heartbeat.start()
        log.info("worker %s started (queues: %s)", owner, self.queues or "all")
        try:
            return self._loop(owner, code, began)
        finally:
            self._stop.set()
            heartbeat.join()

    def _loop(self, owner: str, code: CodeWatch | None, began: float) -> int:
        while not self._stop.is_set():
            if self.max_time is not None and time.monotonic() - began >= self.max_time:
                log.info("max_time of %ss reached", self.max_time)
                return EXIT_OK
            if self.exit_after_n_jobs is not None and self.jobs_processed >= self.exit_after_n_jobs:
                log.info("ran %d jobs: exiting", self.jobs_processed)
                return EXIT_OK
            available = psutil.virtual_memory().available
            if available < self.guarantee_memory:
                log.warning(
                    "only %d MiB of memory available (guarantee_memory is %d MiB): exiting "
                    "so a fresh worker can start",
                    available >> 20,
                    self.guarantee_memory >> 20,
                )
                return EXIT_MEMORY
            changed = code.changed() if code is not None else None
            if changed is not None:
                log.info("source file %s changed: exiting to restart with the new code", changed)
                return EXIT_CODE_CHANGED
            mjob = self.store.claim(owner, self.queues, self.lease)
            if mjob is None:
                if self.exit_if_no_jobs:
                    return EXIT_OK
                self.store.wait_for_jobs(self.queues, self._idle_timeout())
                continue
            self._run(mjob)
        return self._exit_status

    def _idle_timeout(self) -> float:
        timeout = self.wakeup_every
        if self.jitter:
            timeout *= random.uniform(0.8, 1.2)  # noqa: S311 - spreads re-checks, not crypto
        due = self.store.next_run_at(self.queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.store.clock()))
        return timeout

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._current_lock:
                mjob = self._current
            if mjob is not None and not self.store.renew_lease(mjob, self.lease):
                log.warning("job %d: lease lost; it was re-queued elsewhere", mjob.id)

    # -- one job -------------------------------------------------------------
    def _run(self, mjob: ManagedJob) -> None:
        job = mjob.job
        name = job.description() if job is not None else mjob.job_type
        if job is None:
            log.error("job %d cannot run: %s", mjob.id, mjob.decode_error)
            self._ack(
                mjob, lambda: self.store.fail(mjob, f"cannot run: {mjob.decode_error}", retry=False)
            )
            self.jobs_processed += 1
            return
        with self._current_lock:
            self._current = mjob
        log.debug("job %d (%s) started, attempt %d", mjob.id, name, mjob.attempts)
        try:
            try:
                result = job.run(mjob)
            finally:
                try:
                    job.cleanup()
                except Exception:
                    log.exception("cleanup() of job %d raised", mjob.id)
        except (Exception, SystemExit) as exc:
            message = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc()
            status = self._ack(mjob, lambda: self.store.fail(mjob, message, tb))
            log.error(
                "job %d (%s) failed on attempt %d/%d: %s -> %s\n%s",
                mjob.id,
                name,
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
                self._ack(mjob, lambda: self.store.complete(mjob))
            else:
                message = f"run() returned {result!r}; return None or Status.WAIT_ASYNC"
                self._ack(mjob, lambda: self.store.fail(mjob, message, retry=False))
                log.error("job %d (%s): %s", mjob.id, name, message)
            log.debug("job %d (%s) -> %s", mjob.id, name, mjob.status.value)
        finally:
            with self._current_lock:
                self._current = None
            self.jobs_processed += 1

    @staticmethod
    def _ack(mjob: ManagedJob, action: Callable[[], object]) -> Status | None:
        try:
            action()
        except LeaseLost as exc:
            log.warning("job %d: %s; its result is dropped", mjob.id, exc)
            return None
        return mjob.status
