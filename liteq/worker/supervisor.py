"""The supervisor behind `liteq work`: forks N workers, restarts them, forwards signals.

The supervisor never imports the application's job modules: each worker imports them after
fork, so a worker restarted after a deploy runs the new code.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from liteq.errors import StoreCorrupt, StoreError, StoreMoved
from liteq.stores import connect
from liteq.stores.contract import Store
from liteq.stores.sqlite import open_queue_files
from liteq.worker.exits import (
    EXIT_CRASHED,
    EXIT_MEMORY,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_STARTUP_FAILED,
    EXIT_STORE_CORRUPT,
    EXIT_STORE_MOVED,
    FATAL,
    PLANNED,
    describe_exit,
    reason,
)
from liteq.worker.heartbeat import report_health
from liteq.worker.loop import Worker
from liteq.worker.options import WorkerOptions
from liteq.worker.rescue import detect_hung_jobs

log = logging.getLogger("liteq.supervisor")

#: Quick deaths that start a backoff: this many within QUICK_WINDOW seconds.
QUICK_DEATHS, QUICK_WINDOW = 5, 10.0
#: The longest a crash-looping worker waits before it is started again.
MAX_BACKOFF = 5.0
#: How often the supervisor re-queues jobs of dead or hung workers.
HUNG_CHECK_EVERY = 5.0
#: The supervisor's loop runs at least this often, so that it notices its own pauses.
TICK = 1.0
#: After a pause, how long live workers have to renew their leases (their heartbeat
#: threads look every half second) before one may be killed as stuck.
PAUSE_GRACE = 2.0
#: The signals the supervisor handles and forwards.
_HANDLED = frozenset({signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


@dataclass
class _Child:
    pid: int
    started: float
    retiring: bool = False


@dataclass
class Supervisor:
    """Runs `processes` workers on `url` and keeps them running until told to stop."""

    url: str
    imports: Sequence[str] = ()
    processes: int = 1
    worker_options: WorkerOptions = field(default_factory=WorkerOptions)
    burst: bool = False
    hung_check_every: float = HUNG_CHECK_EVERY
    #: Log a worker's traceback when it cannot start (else one line says why).
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, not {self.processes}")
        self._children: dict[int, _Child] = {}
        self._deaths: collections.deque[float] = collections.deque()
        self._pending_starts = 0
        self._next_start = 0.0
        self._signals: list[int] = []
        self._stopping = False
        self._ints = 0
        self._rolling = False
        self._failed = False
        self._fatal: int | None = None
        self._failed_starts = 0  # in a row
        self._last_tick = time.monotonic()
        self._grace_until = 0.0

    # -- signals: handlers only record; the loop acts ------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Supervise until TERM/INT (or, in burst mode, until every worker drained); return 0."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        previous = {s: signal.signal(s, self._on_signal) for s in _HANDLED}
        old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._pipe = (read_fd, write_fd)
        store: Store | None = None
        try:
            log.info("supervisor %d: %d worker(s) on %s", os.getpid(), self.processes, self.url)
            for _ in range(self.processes):
                self._spawn()
            next_check = time.monotonic() + self.hung_check_every
            while self._children or (self._pending_starts and not self._stopping):
                wake = min(next_check, self._next_start_due(), time.monotonic() + TICK)
                with contextlib.suppress(InterruptedError):
                    select.select([read_fd], [], [], max(0.0, wake - time.monotonic()))
                self._notice_pause()
                with contextlib.suppress(BlockingIOError):
                    while os.read(read_fd, 512):
                        pass
                self._handle_signals()
                if self._reap():
                    store = self._rescue(store)
                self._start_due()
                if time.monotonic() >= next_check:
                    store = self._rescue(store)
                    next_check = time.monotonic() + self.hung_check_every
            if self._fatal is None:
                store = self._rescue(store)
            log.info("supervisor %d: all workers stopped", os.getpid())
            if self._fatal is not None:
                return self._fatal
            return 1 if self._failed and self.burst else 0
        finally:
            if store is not None:
                store.close()
            signal.set_wakeup_fd(old_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(read_fd)
            os.close(write_fd)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGQUIT):
                log.info("supervisor: %s: stopping workers", signal.Signals(signum).name)
                self._stopping = True
                self._forward(signum)
            elif signum == signal.SIGINT:
                self._ints += 1
                self._stopping = True
                log.info(
                    "supervisor: SIGINT %s",
                    "again: workers stop now"
                    if self._ints > 1
                    else "(again to stop now): workers finish their jobs",
                )
                self._forward(signal.SIGINT)
            elif signum == signal.SIGHUP and not self._stopping:
                log.info("supervisor: SIGHUP: rolling restart of %d worker(s)", len(self._children))
                for child in self._children.values():
                    child.retiring = True
                self._rolling = True
                self._retire_next()

    def _forward(self, signum: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _retire_next(self) -> None:
        # One at a time, so the others keep serving while each restarts.
        retiring = [c for c in self._children.values() if c.retiring]
        if not retiring:
            self._rolling = False
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(retiring[0].pid, signal.SIGHUP)

    # -- children --------------------------------------------------------------
    def _reap(self) -> bool:
        """Collect dead children; return True if any died unexpectedly (its job needs rescue)."""
        crashed = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return crashed
            if pid == 0:
                return crashed
            child = self._children.pop(pid, None)
            if child is None:
                continue
            lived = time.monotonic() - child.started
            code = os.waitstatus_to_exitcode(status)
            planned = os.WIFEXITED(status) and code in PLANNED
            crashed |= not planned
            if code in FATAL and self._fatal is None:
                log.error(
                    "worker %d stopped: %s; no worker can go on with it, so liteq work stops",
                    pid,
                    reason(code),
                )
                self._stop_all(code)
                continue
            if self._stopping:
                log.info("worker %d stopped: %s", pid, describe_exit(status))
                continue
            if self.burst and code == EXIT_OK:
                log.info("worker %d drained the queue", pid)
                continue
            if self.burst and code == EXIT_STARTUP_FAILED and self._fatal is None:
                log.error("worker %d could not start: liteq work --burst stops", pid)
                self._stop_all(code)
                continue
            if self.burst and not planned:
                self._failed = True
            if code == EXIT_STARTUP_FAILED:
                # It will not start on the next try either until the cause is mended: wait
                # at once, longer each time, and say so once per wait.
                # Workers of one round that fail together count as one failed try.
                self._pending_starts += 1
                if time.monotonic() < self._next_start:
                    continue
                self._failed_starts += 1
                delay = min(MAX_BACKOFF, 0.5 * 2 ** (self._failed_starts - 1))
                self._next_start = time.monotonic() + delay
                log.warning("workers cannot start (see above): next try in %.1fs", delay)
                continue
            self._failed_starts = 0
            if not planned or lived < 1.0:
                self._deaths.append(time.monotonic())
            log.log(
                logging.INFO if planned else logging.WARNING,
                "worker %d %s after %.1fs: starting a new one",
                pid,
                describe_exit(status),
                lived,
            )
            self._pending_starts += 1
            if child.retiring:
                self._retire_next()

    def _next_start_due(self) -> float:
        return self._next_start if self._pending_starts else time.monotonic() + 3600

    def _start_due(self) -> None:
        if self._stopping:
            self._pending_starts = 0
            return
        now = time.monotonic()
        while self._deaths and self._deaths[0] < now - QUICK_WINDOW:
            self._deaths.popleft()
        while self._pending_starts and now >= self._next_start:
            self._pending_starts -= 1
            self._spawn()
            quick = len(self._deaths)
            if quick >= QUICK_DEATHS:
                delay = min(MAX_BACKOFF, 0.25 * 2 ** (quick - QUICK_DEATHS))
                log.warning(
                    "workers keep dying (%d in %.0fs): waiting %.2fs before the next start",
                    quick,
                    QUICK_WINDOW,
                    delay,
                )
                self._next_start = now + delay
                return

    def _stop_all(self, status: int) -> None:
        self._fatal = status
        self._stopping = True
        self._forward(signal.SIGTERM)

    def _notice_pause(self) -> None:
        # The loop runs at least every TICK: a longer gap means this process was paused
        # (SIGSTOP, a VM pause), and so perhaps were its workers, which then need a moment
        # to renew their leases before any of them may be judged stuck.
        now = time.monotonic()
        if now - self._last_tick > TICK + 1.0:
            log.info("supervisor: resumed after %.1fs", now - self._last_tick)
            self._grace_until = now + PAUSE_GRACE
        self._last_tick = now

    def _rescue(self, store: Store | None) -> Store | None:
        """Re-queue the jobs of dead or hung workers; the store, opened on first use (and
        closed after each check: none is open when a worker forks)."""
        if self._fatal is not None:
            return store  # the queue was deleted, replaced or damaged: touch it no more
        awake = time.monotonic() >= self._grace_until
        try:
            if store is None:
                # Read-only first, which never creates: a supervisor's first look after
                # its file was deleted must not leave a new, empty queue at the path.
                connect(self.url, readonly=True).close()
                store = connect(self.url)
            for mjob in detect_hung_jobs(store, kill_live=awake):
                log.warning("re-queued job %d of a dead or hung worker: %s", mjob.id, mjob.error)
            report_health(store)
        except (StoreMoved, StoreCorrupt) as exc:
            if self._fatal is None:
                log.error("%s; liteq work stops", exc)
                code = EXIT_STORE_MOVED if isinstance(exc, StoreMoved) else EXIT_STORE_CORRUPT
                self._stop_all(code)
        except StoreError as exc:  # the server is down, say: the next check tries again
            log.warning("hung-job check failed: %s", exc)
        except Exception:
            log.exception("hung-job check failed")
        finally:
            if store is not None:
                store.close()
        return store

    def _spawn(self) -> None:
        # Signals stay blocked across fork(): a TERM forwarded to a child before it has
        # dropped the supervisor's handlers would otherwise be recorded and never acted on.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                os._exit(_child_main(self, self._pipe))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        self._children[pid] = _Child(pid, time.monotonic())
        log.debug("started worker %d", pid)


def _child_main(supervisor: Supervisor, pipe: tuple[int, int]) -> int:
    parent = os.getppid()
    url = supervisor.url
    try:
        # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which
        # forwards it once (otherwise each worker would see it twice and stop at once).
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for fd in pipe:
            os.close(fd)
        for signum in _HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)  # a pending TERM now ends it
        # As `python -m` does: the application's own modules import from where it runs;
        # and its code finds this queue with liteq.connect().
        os.environ["LITEQ_URL"] = url
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for module in supervisor.imports:  # after fork: each new worker loads the current code
            importlib.import_module(module)
        store = connect(url)
    except BaseException as exc:
        if supervisor.verbose:
            log.error("worker %d could not start:\n%s", os.getpid(), traceback.format_exc())
        else:
            log.error("worker %d could not start: %s: %s", os.getpid(), type(exc).__name__, exc)
        return EXIT_STARTUP_FAILED
    _warn_of_other_queues(store)
    # The supervisor reports the store's health, once for all its workers.
    options = dataclasses.replace(supervisor.worker_options, check_health=False)
    worker = Worker.with_options(store, options)
    threading.Thread(target=_watch_parent, args=(worker, parent), daemon=True).start()
    try:
        return worker.start()
    except BaseException:
        log.error("worker %d crashed:\n%s", os.getpid(), traceback.format_exc().rstrip())
        return EXIT_MEMORY if isinstance(sys.exc_info()[1], MemoryError) else EXIT_CRASHED


def _warn_of_other_queues(store: Store) -> None:
    """A jobs module that opened a queue of its own (a module-level SQLiteStore("x")) would
    send the jobs it enqueues there, not to this worker's queue: say so once."""
    path = getattr(store, "path", None)
    ours = os.path.realpath(path) if isinstance(path, str) else repr(store)
    for other in sorted(open_queue_files() - {ours}):
        log.warning(
            "an imported module opened the queue %s, not the one liteq work serves (%s): jobs "
            "it enqueues go there; write `store = liteq.connect()` in it to use the "
            "worker's queue (liteq work sets LITEQ_URL)",
            other,
            ours,
        )


def _watch_parent(worker: Worker, parent: int) -> None:
    """A worker whose supervisor died finishes its job and exits instead of living on alone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("worker %d: the supervisor %d is gone: finishing and exiting", os.getpid(), parent)
    worker.stop(EXIT_SIGNAL)
