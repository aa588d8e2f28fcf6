"""The supervisor behind `liteq work`: forks N workers, restarts them, forwards signals.

The supervisor never imports the application's job modules: each worker imports them after
fork, so a worker restarted after a deploy runs the new code.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import select
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

import psutil

from liteq.errors import StoreCorrupt, StoreError, StoreMoved
from liteq.status import Status
from liteq.stores import connect, shown_url
from liteq.stores.contract import Store
from liteq.worker.child import HANDLED, Child, child_main, how_it_died, new_slot
from liteq.worker.exits import (
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    EXIT_STORE_CORRUPT,
    EXIT_STORE_MOVED,
    FATAL,
    PLANNED,
    describe_exit,
    reason,
)
from liteq.worker.heartbeat import report_health
from liteq.worker.identity import process_start
from liteq.worker.options import WorkerOptions
from liteq.worker.pools import Pools, PoolSpec
from liteq.worker.rescue import Ended, ProcessKey, detect_hung_jobs

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
#: While a limit on workers' memory is set, how often the supervisor reads their RSS: a job
#: that allocates without bound is stopped within about this long of crossing it.
RSS_CHECK_EVERY = 0.1


@dataclass
class _PoolSpawner:
    """What a child of one pool takes from the supervisor (its queues are the pool's)."""

    url: str
    imports: Sequence[str]
    verbose: bool
    worker_options: WorkerOptions


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
    #: Autoscaled pools (then `processes` is not used): each grows and shrinks between its
    #: limits (liteq/worker/autoscale.py), its workers bound to its queues.
    pools: Sequence[PoolSpec] = ()
    #: While autoscaling, the most worker processes of all pools together.
    max_processes: int | None = None
    #: While autoscaling, bytes of available memory a new worker must leave to the rest of
    #: the host (None: the workers' guarantee_memory).
    memory_reserve: int | None = None

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, not {self.processes}")
        self._children: dict[int, Child] = {}
        self._deaths: collections.deque[float] = collections.deque()
        #: The pool of each worker to be started ("": the fixed pool of `processes`).
        self._pending_starts: list[str] = []
        self._spawners: dict[str, _PoolSpawner] = {
            spec.name: _PoolSpawner(
                self.url,
                self.imports,
                self.verbose,
                dataclasses.replace(self.worker_options, queues=spec.queues),
            )
            for spec in self.pools
        }
        self._pools: Pools | None = None
        if self.pools:
            self._pools = Pools(
                self.url,
                self.pools,
                self._children,
                self._pending_starts,
                max_processes=self.max_processes,
                reserve=(
                    self.worker_options.guarantee_memory
                    if self.memory_reserve is None
                    else self.memory_reserve
                ),
            )
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
        #: How children died, until a hung-job check has acted on it.
        self._ended: dict[ProcessKey, Ended] = {}
        self._next_rss_check = 0.0

    # -- signals: handlers only record; the loop acts ------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Supervise until TERM/INT (or, in burst mode, until every worker drained); return 0."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        previous = {s: signal.signal(s, self._on_signal) for s in HANDLED}
        old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._pipe = (read_fd, write_fd)
        store: Store | None = None
        try:
            if self.pools:
                log.info(
                    "supervisor %d: autoscaling %s on %s",
                    os.getpid(),
                    ", ".join(
                        f"{p.name} {p.limits.minimum}:{p.limits.maximum}" for p in self.pools
                    ),
                    shown_url(self.url),
                )
                for spec in self.pools:
                    for _ in range(spec.limits.minimum):
                        self._spawn(spec.name)
            else:
                log.info(
                    "supervisor %d: %d worker(s) on %s",
                    os.getpid(),
                    self.processes,
                    shown_url(self.url),
                )
                for _ in range(self.processes):
                    self._spawn()
            next_check = time.monotonic() + self.hung_check_every
            while (
                self._children
                or (self._pending_starts and not self._stopping)
                or (self._pools is not None and not self._stopping)
            ):
                wake = min(next_check, self._next_start_due(), time.monotonic() + TICK)
                if self._pools is not None:
                    wake = min(wake, self._pools.next_due)
                if self.worker_options.max_rss is not None:
                    wake = min(wake, self._next_rss_check)
                readying = [c.ready_fd for c in self._children.values() if c.ready_fd is not None]
                ready: list[int] = []
                with contextlib.suppress(InterruptedError):
                    ready, _, _ = select.select(
                        [read_fd, *readying], [], [], max(0.0, wake - time.monotonic())
                    )
                self._notice_pause()
                with contextlib.suppress(BlockingIOError):
                    while os.read(read_fd, 512):
                        pass
                self._note_ready(ready)
                self._handle_signals()
                self._watch_memory()
                if self._reap():
                    store = self._rescue(store)
                if self._pools is not None:
                    running = not self._stopping and self._fatal is None
                    self._pools.tick(decide=running and not self._rolling, report=running)
                self._start_due()
                self._retire_next()
                if time.monotonic() >= next_check:
                    store = self._rescue(store)
                    next_check = time.monotonic() + self.hung_check_every
            if self._fatal is None:
                store = self._rescue(store)
                if self._pools is not None:
                    self._pools.withdraw()
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

    def _forward(self, signum: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _retire_next(self) -> None:
        # One at a time, and the next only once the last one's replacement is ready (it
        # has opened the store and registered), so that no fewer than N-1 workers serve at
        # any moment; a replacement that cannot start holds the rest of the roll.
        if not self._rolling or self._stopping:
            return
        children = self._children.values()
        retiring = [c for c in children if c.retiring]
        if not retiring:  # (the last replacements may still be starting)
            self._rolling = False
            log.info("supervisor: rolling restart done")
            return
        if self._pending_starts or any(c.leaving or not c.ready for c in children):
            return
        retiring[0].leaving = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(retiring[0].pid, signal.SIGHUP)

    def _note_ready(self, readable: list[int]) -> None:
        """Children whose ready byte came (or whose pipe closed: they died first)."""
        for child in self._children.values():
            fd = child.ready_fd
            if fd is None or fd not in readable:
                continue
            try:
                child.ready = os.read(fd, 1) == b"r"
            except OSError:
                child.ready = False
            os.close(fd)
            child.ready_fd = None
            if child.ready:
                log.debug("worker %d is ready", child.pid)

    def _watch_memory(self) -> None:
        """Kill a worker whose job took it past max_rss: between jobs the worker checks for
        itself, but a job that allocates without bound would take the host with it. The
        kill counts as a crash of that job (the worker's replacement starts as usual)."""
        max_rss = self.worker_options.max_rss
        now = time.monotonic()
        if max_rss is None or now < self._next_rss_check:
            return
        self._next_rss_check = now + RSS_CHECK_EVERY
        for child in self._children.values():
            if child.killed_for is not None or not child.busy():
                continue
            try:
                rss = int(psutil.Process(child.pid).memory_info().rss)
            except psutil.Error:
                continue  # gone: reaped next
            if rss <= max_rss:
                continue
            child.killed_for = f"stopped at {rss >> 20} MiB RSS, over --max-rss {max_rss >> 20} MiB"
            log.warning(
                "worker %d: job %s: %s: killing it",
                child.pid,
                child.running() or "(several)",
                child.killed_for,
            )
            # Our own unreaped child: its pid cannot name another process yet.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

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
            job_id, busy = child.running(), child.busy()
            child.close()
            # A job it was running when it died is that job's crash, however it exited
            # (a job may call os._exit(0)); one it left deliberately is not in its slot.
            # (Of several coroutine jobs in flight, each is blamed, and then runs alone.)
            crashed |= not planned or busy
            death = how_it_died(child, status)
            if child.start is not None:  # (even with no job: then none of its jobs is blamed)
                several = busy and job_id is None
                self._ended[pid, child.start] = Ended(death, job_id, several)
            if job_id is not None:
                log.warning("worker %d died running job %d: %s", pid, job_id, death)
            elif busy and not planned:
                log.warning("worker %d died running several coroutine jobs: %s", pid, death)
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
            if child.scaled_down:  # (not a death: the autoscaler asked it to go)
                log.info("worker %d stopped (scaled down): %s", pid, describe_exit(status))
                continue
            # (One that stopped at --max-jobs or --max-time with jobs still due: a new one
            # goes on.)
            if self.burst and code == EXIT_OK and not self._jobs_due():
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
                self._pending_starts.append(child.pool)
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
            self._pending_starts.append(child.pool)

    def _jobs_due(self) -> bool:
        """Whether a job of the workers' queues is due now (a store opened for the look,
        read-only, and closed: none is open when a worker forks)."""
        try:
            store = connect(self.url, readonly=True)
        except StoreError:
            return False  # (no queue to read: nothing to drain)
        try:
            due = store.next_run_at(self.worker_options.queues)
            return due is not None and due <= store.clock()
        except StoreError:
            return False
        finally:
            store.close()

    def _next_start_due(self) -> float:
        return self._next_start if self._pending_starts else time.monotonic() + 3600

    def _start_due(self) -> None:
        if self._stopping:
            self._pending_starts.clear()
            return
        now = time.monotonic()
        while self._deaths and self._deaths[0] < now - QUICK_WINDOW:
            self._deaths.popleft()
        while self._pending_starts and now >= self._next_start:
            self._spawn(self._pending_starts.pop(0))
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
            ended, self._ended = self._ended, {}
            unreaped = {(c.pid, c.start) for c in self._children.values() if c.start}
            try:
                rescued = detect_hung_jobs(
                    store,
                    kill_live=awake,
                    max_crashes=self.worker_options.max_crashes,
                    ended=ended,
                    unreaped=unreaped,
                )
            except BaseException:
                self._ended = {**ended, **self._ended}  # for the next check
                raise
            for mjob in rescued:
                if mjob.status is Status.FAILED:
                    log.error("job %d failed for good: %s", mjob.id, mjob.error)
                else:
                    log.warning(
                        "re-queued job %d of a dead or hung worker: %s", mjob.id, mjob.error
                    )
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

    def _spawn(self, pool: str = "") -> None:
        slot = new_slot()  # (anonymous memory is shared with the child)
        ready_read, ready_write = os.pipe()
        supervisor = os.getpid()
        # Signals stay blocked across fork(): a TERM forwarded to a child before it has
        # dropped the supervisor's handlers would otherwise be recorded and never acted on.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                os.close(ready_read)
                for other in self._children.values():  # (theirs, not this child's)
                    other.close()
                spawner = self._spawners.get(pool, self)
                os._exit(child_main(spawner, self._pipe, slot, ready_write, supervisor))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        os.close(ready_write)
        os.set_blocking(ready_read, False)
        child = Child(pid, time.monotonic(), process_start(pid), slot, ready_read, pool=pool)
        self._children[pid] = child
        log.debug("started worker %d%s", pid, f" of pool {pool}" if pool else "")
