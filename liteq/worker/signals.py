"""A worker's signals and job alarms: handlers set flags, and raise in a job only to stop it."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Final

from liteq.worker.exits import EXIT_OK, EXIT_SIGNAL

if TYPE_CHECKING:
    from liteq.worker.run import InFlight, Run

#: After a job should have been interrupted, how long before the process exits hard.
HARD_EXIT_GRACE: Final = 5.0


class Interrupted(BaseException):
    """Raised inside a running job to stop it: shutdown timeout, second INT, or max_runtime.

    A BaseException, so the job's own `except Exception` does not swallow it.
    """

    def __init__(
        self, reason: str, *, stop_worker: bool, death: str | None = None, shared: bool = False
    ) -> None:
        super().__init__(reason)
        self.stop_worker = stop_worker
        #: How the job took its worker down (over max_rss), if it did: a crash of the job.
        self.death = death
        #: That death was shared with other jobs in flight: never the job's last crash.
        self.shared = shared


def stop_run(run: Run, stop: Interrupted) -> None:
    """Stop a coroutine run (from any thread, or a signal handler): its task is cancelled
    on its loop; should the loop not get to it (blocked), the heartbeat ends the process
    after HARD_EXIT_GRACE, as for a plain job that cannot be interrupted."""
    if run.stopped is not None:
        return
    run.stopped = stop
    if run.hard_exit_at is None:
        run.hard_exit_at = time.monotonic() + HARD_EXIT_GRACE
        run.hard_exit_blames_job = stop.death is not None or not stop.stop_worker
    if run.cancel is not None:
        run.cancel.soon()


class Signals:
    """What signals asked of a worker, and the alarms that time the jobs it has in flight.

    TERM/QUIT: finish the jobs within the graceful timeout, else interrupt them; INT: finish,
    a second INT interrupts now; HUP: finish (a restart); ALRM: a deadline has come, or the
    heartbeat asks to stop a job. Worker-wide state lives here (a stop requested, the exit
    status, the INTs); each job's lives on its `Run`, found through `in_flight`.
    Plain attributes only: a handler must not take locks.
    """

    def __init__(self, graceful_timeout: float, in_flight: InFlight) -> None:
        self.graceful_timeout = graceful_timeout
        self.in_flight = in_flight
        self.stop_requested = False
        self.exit_status = EXIT_OK
        self.ints = 0
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

    def request_stop(self, status: int | None = None) -> None:
        """Finish the jobs in flight, then return `status` from Worker.start() (None: keep
        the status asked before, if any)."""
        if status is not None:
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
    def job_starts(self, run: Run, max_runtime: float | None) -> None:
        """Arm the alarms `run` needs: its max_runtime, and the graceful timeout if a
        TERM came before it started."""
        if not self.installed or (max_runtime is None and not self.stop_requested):
            return
        run.graceful_deadline = None
        run.runtime_deadline = None
        if max_runtime is not None:
            run.runtime_deadline = time.monotonic() + max_runtime
        if self.stop_requested and self.exit_status == EXIT_SIGNAL:
            run.graceful_deadline = time.monotonic() + self.graceful_timeout
        self._arm()

    def job_ends(self, run: Run) -> None:
        """Disarm `run`'s alarms (those of other runs stay armed)."""
        if run.graceful_deadline is not None or run.runtime_deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            run.graceful_deadline = None
            run.runtime_deadline = None
            self._arm()

    # -- handlers --------------------------------------------------------------------------
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(EXIT_SIGNAL)
        timed = False
        for run in self.in_flight.now():
            if run.graceful_deadline is None:
                run.graceful_deadline = time.monotonic() + self.graceful_timeout
                timed = True
        if timed:
            self._arm()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self.ints += 1
        self.request_stop(EXIT_SIGNAL)
        if self.ints >= 2:
            reason = "a second SIGINT asked to stop now"
            self._interrupt([(run, reason, True, None) for run in self.in_flight.now()])

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(EXIT_SIGNAL)

    def lose_lease(self, run: Run, reason: str) -> None:
        """Stop `run`: its lease is lost, so it may run elsewhere now (called from the
        heartbeat's thread; a plain job is stopped in the main thread by ALRM)."""
        if run.cancel is not None:
            stop_run(run, Interrupted(reason, stop_worker=False))
            return
        if not self.installed or not run.executing:
            return
        run.lease_lost = reason
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)

    def stop_for_memory(self, run: Run, death: str, *, shared: bool = False) -> None:
        """Stop `run` and then the worker: its job took the worker past max_rss (called
        from the heartbeat's thread, like lose_lease). Of several coroutine jobs in flight
        (`shared`), each is stopped so: each counts a crash, and then runs alone."""
        if run.cancel is not None:
            stop = Interrupted(death, stop_worker=True, death=death, shared=shared)
            stop_run(run, stop)
            return
        if not self.installed or not run.executing:
            return
        run.over_memory = death
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        stops: list[tuple[Run, str, bool, str | None]] = []
        for run in self.in_flight.now():
            if run.over_memory is not None:
                death, run.over_memory = run.over_memory, None
                stops.append((run, death, True, death))
            elif run.lease_lost is not None:
                reason, run.lease_lost = run.lease_lost, None
                stops.append((run, reason, False, None))
            elif run.graceful_deadline is not None and now >= run.graceful_deadline:
                reason = (
                    f"the job outlasted the graceful shutdown timeout of {self.graceful_timeout}s"
                )
                stops.append((run, reason, True, None))
            elif run.runtime_deadline is not None and now >= run.runtime_deadline:
                stops.append((run, "the job ran longer than its max_runtime", False, None))
        # A run stopped now is not timed again (its hard exit is); the others are.
        self._arm(skip=[stop[0] for stop in stops])
        self._interrupt(stops)

    def _arm(self, skip: list[Run] | None = None) -> None:
        deadlines = [
            deadline
            for run in self.in_flight.now()
            if not skip or run not in skip
            for deadline in (run.graceful_deadline, run.runtime_deadline)
            if deadline is not None
        ]
        if deadlines:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, min(deadlines) - time.monotonic()))

    def _interrupt(self, stops: list[tuple[Run, str, bool, str | None]]) -> None:
        """Stop each run of `stops` (with its reason, whether to stop the worker too, and
        its `death`) by raising in the one whose code executes now; one not in its code now
        is ending anyway. A job stopped for its own doing (`death`, or not to stop the
        worker: max_runtime) is to blame should its worker then have to exit hard."""
        raised: Interrupted | None = None
        for run, reason, stop_worker, death in stops:
            if run.hard_exit_at is None:
                run.hard_exit_at = time.monotonic() + HARD_EXIT_GRACE
                run.hard_exit_blames_job = death is not None or not stop_worker
            if run.cancel is not None:  # a coroutine job: its task is cancelled instead
                stop_run(run, Interrupted(reason, stop_worker=stop_worker, death=death))
            elif run.executing:
                raised = Interrupted(reason, stop_worker=stop_worker, death=death)
        if raised is not None:
            raise raised
