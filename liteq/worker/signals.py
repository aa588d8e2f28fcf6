"""A worker's signals and job alarms: handlers set flags, and raise in a job only to stop it."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Final

from liteq.worker.exits import EXIT_OK, EXIT_SIGNAL

#: After a job should have been interrupted, how long before the process exits hard.
HARD_EXIT_GRACE: Final = 5.0


class Interrupted(BaseException):
    """Raised inside a running job to stop it: shutdown timeout, second INT, or max_runtime.

    A BaseException, so the job's own `except Exception` does not swallow it.
    """

    def __init__(self, reason: str, *, stop_worker: bool, death: str | None = None) -> None:
        super().__init__(reason)
        self.stop_worker = stop_worker
        #: How the job took its worker down (over max_rss), if it did: a crash of the job.
        self.death = death


class Signals:
    """What signals asked of a worker, and the alarms that time its job.

    TERM/QUIT: finish the job within the graceful timeout, else interrupt it; INT: finish,
    a second INT interrupts now; HUP: finish (a restart); ALRM: a deadline has come.
    Plain attributes only: a handler must not take locks.
    """

    def __init__(self, graceful_timeout: float) -> None:
        self.graceful_timeout = graceful_timeout
        self.stop_requested = False
        self.exit_status = EXIT_OK
        self.ints = 0
        #: A job is current (from its claim to its cleanup) / its run() is executing.
        self.job_current = False
        self.in_job = False
        self.graceful_deadline: float | None = None
        self.runtime_deadline: float | None = None
        #: When the heartbeat ends the process, if a job could not be interrupted.
        self.hard_exit_at: float | None = None
        #: Whether that exit is the job's doing (past max_runtime, say: a crash of the job)
        #: or a deliberate stop's (past the graceful timeout: none).
        self.hard_exit_blames_job = False
        #: Why the running job's lease is lost (the heartbeat says so from its thread).
        self.lease_lost: str | None = None
        #: How far past max_rss the running job took the worker (the heartbeat says so).
        self.over_memory: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def installed(self) -> bool:
        """Whether this worker's handlers are in place (only in the main thread)."""
        return bool(self._previous)

    def reset(self) -> None:
        """As at the start of Worker.start()."""
        self.stop_requested = False
        self.exit_status = EXIT_OK
        self.ints = 0

    def request_stop(self, status: int) -> None:
        """Finish the current job, then return `status` from Worker.start()."""
        self.exit_status = status
        self.stop_requested = True

    def install(self) -> None:
        """Take over TERM, QUIT, INT, HUP and ALRM (in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        handlers = {
            signal.SIGTERM: self._on_term,
            signal.SIGQUIT: self._on_term,
            signal.SIGINT: self._on_int,
            signal.SIGHUP: self._on_hup,
            signal.SIGALRM: self._on_alarm,
        }
        for signum, handler in handlers.items():
            self._previous[signum] = signal.signal(signum, handler)

    def restore(self) -> None:
        """Give the signals back to the handlers they had before install()."""
        if self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what getsignal gave back
        self._previous.clear()

    # -- a job's alarms ------------------------------------------------------------------
    def job_starts(self, max_runtime: float | None) -> None:
        """Arm the alarms a job needs: its max_runtime, and the graceful timeout if a
        TERM came before it started."""
        if not self.installed or (max_runtime is None and not self.stop_requested):
            return
        self.graceful_deadline = None
        self.runtime_deadline = None
        if max_runtime is not None:
            self.runtime_deadline = time.monotonic() + max_runtime
        if self.stop_requested and self.exit_status == EXIT_SIGNAL:
            self.graceful_deadline = time.monotonic() + self.graceful_timeout
        self._arm()

    def job_ends(self) -> None:
        """Disarm the job's alarms."""
        if self.graceful_deadline is not None or self.runtime_deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.graceful_deadline = None
        self.runtime_deadline = None

    # -- handlers --------------------------------------------------------------------------
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(EXIT_SIGNAL)
        if self.job_current and self.graceful_deadline is None:
            self.graceful_deadline = time.monotonic() + self.graceful_timeout
            self._arm()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self.ints += 1
        self.request_stop(EXIT_SIGNAL)
        if self.ints >= 2 and self.job_current:
            self._interrupt("a second SIGINT asked to stop now", stop_worker=True)

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(EXIT_SIGNAL)

    def lose_lease(self, reason: str) -> None:
        """Stop the running job: its lease is lost, so it may run elsewhere now (called
        from the heartbeat's thread; the job is stopped in the main thread by ALRM)."""
        if not self.installed or not self.in_job:
            return
        self.lease_lost = reason
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)

    def stop_for_memory(self, death: str) -> None:
        """Stop the running job and then the worker: it took the worker past max_rss (called
        from the heartbeat's thread, like lose_lease)."""
        if not self.installed or not self.in_job:
            return
        self.over_memory = death
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.over_memory is not None:
            death, self.over_memory = self.over_memory, None
            self._interrupt(death, stop_worker=True, death=death)
        elif self.lease_lost is not None:
            reason, self.lease_lost = self.lease_lost, None
            self._interrupt(reason, stop_worker=False)
        elif self.graceful_deadline is not None and now >= self.graceful_deadline:
            self._interrupt(
                f"the job outlasted the graceful shutdown timeout of {self.graceful_timeout}s",
                stop_worker=True,
            )
        elif self.runtime_deadline is not None and now >= self.runtime_deadline:
            self._interrupt("the job ran longer than its max_runtime", stop_worker=False)
        else:
            self._arm()

    def _arm(self) -> None:
        deadlines = [d for d in (self.graceful_deadline, self.runtime_deadline) if d is not None]
        if deadlines:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, min(deadlines) - time.monotonic()))

    def _interrupt(self, reason: str, *, stop_worker: bool, death: str | None = None) -> None:
        """Stop the running job by raising in it; if it is not in its code now, it is
        ending anyway. A job stopped for its own doing (`death`, or not to stop the worker:
        max_runtime) is to blame should its worker then have to exit hard."""
        if self.hard_exit_at is None:
            self.hard_exit_at = time.monotonic() + HARD_EXIT_GRACE
            self.hard_exit_blames_job = death is not None or not stop_worker
        if self.in_job:
            raise Interrupted(reason, stop_worker=stop_worker, death=death)
