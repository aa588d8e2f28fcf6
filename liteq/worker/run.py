"""Run: one job in flight in a worker; InFlight: the set of runs a worker has in flight.

What the loop, the signal handlers and the heartbeat share about a running job lives on its
Run, for the life of that job (from its start until its outcome is recorded): its deadlines,
whether its code executes now, the stops asked of it, and when its worker must exit hard if
it cannot be stopped. The loop makes each Run and is the one writer of InFlight; the signal
handlers and the heartbeat's thread read InFlight without taking a lock. What is the
worker's, not one job's (a stop requested, the exit status, the count of SIGINTs), stays on
`Signals`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.worker.signals import Interrupted


#: Told a supervisor while several jobs are in flight: a death then blames each of them.
SEVERAL = -1


class Cancel(Protocol):
    """How a coroutine run is stopped: its task cancelled on its loop, from any thread."""

    def soon(self) -> None: ...


class Run:
    """One job in flight in this worker, shared by the loop, the signal handlers and the
    heartbeat. Plain attributes only (a handler must not take locks); class-level defaults
    keep making one cheap (it is made for every job)."""

    #: Its code executes now, in the main thread: a stop raises `Interrupted` in it.
    executing: bool = False
    #: When its max_runtime ends / the graceful shutdown timeout ends (monotonic), if armed.
    runtime_deadline: float | None = None
    graceful_deadline: float | None = None
    #: When the heartbeat ends the process, if the job could not be interrupted.
    hard_exit_at: float | None = None
    #: Whether that exit is the job's doing (past max_runtime, say: a crash of the job)
    #: or a deliberate stop's (past the graceful timeout: none).
    hard_exit_blames_job: bool = False
    #: Stops the heartbeat asks from its thread, delivered in the main thread by ALRM: why
    #: the job's lease is lost, how far past max_rss the job took the worker.
    lease_lost: str | None = None
    over_memory: str | None = None
    #: The heartbeat asked those stops already (each once: a stopped job is handed back
    #: when it has unwound).
    lease_given_up: bool = False
    rss_stopped: bool = False
    #: A coroutine job's: how to cancel its task, and the stop asked of it (which its
    #: outcome is, however its code ends: see coroutines.py). None for a plain job.
    cancel: Cancel | None = None
    stopped: Interrupted | None = None

    def __init__(self, mjob: ManagedJob) -> None:
        self.mjob = mjob

    def __repr__(self) -> str:
        return f"<Run of job {self.mjob.id}{' (executing)' if self.executing else ''}>"


class InFlight(set[Run]):
    """The runs a worker has in flight: one at a time for plain jobs; up to a worker's
    concurrency for coroutine jobs.

    Only the worker's loop adds and discards (set methods in C: no cost on the path of
    every job). A signal handler or the heartbeat's thread reads `now()`, a snapshot taken
    in one step under the GIL (iterating the set itself from another thread could meet it
    changing size).
    """

    def now(self) -> tuple[Run, ...]:
        """The runs in flight now."""
        return tuple(self)

    def running(self) -> int | None:
        """What a supervisor is told runs now: the id of the job in flight if it is the only
        one (a death is then its doing), SEVERAL if more are, None if none is."""
        runs = self.now()
        if not runs:
            return None
        return runs[0].mjob.id if len(runs) == 1 else SEVERAL

    def current_id(self) -> int | None:
        """The id of a job in flight, if any (the registry of workers shows one)."""
        for run in self.now():
            return run.mjob.id
        return None
