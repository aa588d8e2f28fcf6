"""Coroutine jobs: an event loop on a thread of the worker's own, where up to the worker's
concurrency of `async def` jobs are in flight at once.

The worker's main thread stays what it was: it claims, records outcomes, runs plain jobs one
at a time, and takes the signals. It hands each coroutine job to the loop here and goes on;
the loop awaits it and hands back an `Outcome`. So a plain job never holds up the loop's
jobs, and a coroutine that blocks the loop (a `time.sleep` by mistake) holds up only the
loop: leases are renewed by the heartbeat's thread, and a stop that the loop cannot deliver
ends in the heartbeat's hard exit, as for a plain job stuck outside Python.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from liteq.worker.signals import Interrupted, stop_run

if TYPE_CHECKING:
    import asyncio

    from liteq.job import Job
    from liteq.worker.run import Run

log = logging.getLogger("liteq.worker")

#: The longest closing waits for the loop's thread to end.
CLOSE_WAIT: Final = 5.0


@dataclass(slots=True)  # (not frozen: a frozen one costs a microsecond more a job to make)
class Outcome:
    """How a job's attempt ended: what `run` returned, or what it raised (with its
    traceback). An `Interrupted` is a stop the worker asked for. Made once, never changed."""

    run: Run
    result: object = None
    error: BaseException | None = None
    traceback: str = ""


class Coroutines:
    """The event loop of one worker and the coroutine jobs it has in flight.

    Only the worker's main thread calls `start`, `outcomes` and `close`; `wake` (the
    store's) is called from the loop's thread when an outcome is ready, so that a worker
    idling for new jobs records it at once."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        #: Coroutine jobs started and whose outcome is not taken yet (main thread only).
        self.count = 0

    def start(self, run: Run, job: Job) -> None:
        """Start awaiting `job.run(run.mjob)` on the loop; its outcome comes from `outcomes`."""
        loop = self._loop if self._loop is not None else self._open()
        self.count += 1
        # (The run's stop works from the start: a stop asked before the task exists is
        # seen by _attempt as it begins.)
        run.cancel = _Canceller(loop, run)
        loop.call_soon_threadsafe(self._begin, run, job)

    def outcomes(self, wait: float = 0.0) -> list[Outcome]:
        """The outcomes ready now, waiting up to `wait` seconds for a first one."""
        got: list[Outcome] = []
        try:
            got.append(self._done.get(timeout=wait) if wait > 0 else self._done.get_nowait())
            while True:
                got.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self.count -= len(got)
        return got

    def ended(self) -> bool:
        """Whether an outcome waits to be taken."""
        return not self._done.empty()

    def close(self) -> None:
        """Stop the loop and its thread (with no job in flight; else they are left to end
        with the process, as daemon threads do)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self.count:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_WAIT)
        if not thread.is_alive():
            loop.close()

    # -- the loop's thread ---------------------------------------------------------------
    def _open(self) -> asyncio.AbstractEventLoop:
        # (asyncio is imported here, not with the module: a worker of plain jobs, the most
        # common, would pay its import, a tenth of its start-up, for nothing.)
        import asyncio

        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="liteq-coroutines", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        return loop

    def _begin(self, run: Run, job: Job) -> None:
        import asyncio  # (see _open; imported by then)

        asyncio.get_running_loop().create_task(self._attempt(run, job))

    async def _attempt(self, run: Run, job: Job) -> None:
        import asyncio  # (see _open; imported by then)

        # (A task is cancelled only once it runs here: one cancelled before its first
        # step would end without running a line of this, and hand back no outcome.)
        cast(_Canceller, run.cancel).task = asyncio.current_task()
        mjob = run.mjob
        loop = asyncio.get_running_loop()
        timer = None
        if mjob.max_runtime is not None:  # (also without signals: see _Canceller)
            stop = Interrupted("the job ran longer than its max_runtime", stop_worker=False)
            timer = loop.call_later(mjob.max_runtime, stop_run, run, stop)
        try:
            if run.stopped is not None:  # stopped before it began: it does not begin
                raise asyncio.CancelledError
            outcome = Outcome(run, result=await cast(Awaitable[object], job.run(mjob)))
        except asyncio.CancelledError:
            stopped = run.stopped
            if stopped is None:  # cancelled by its own code, not by the worker: a failure
                outcome = Outcome(run, error=asyncio.CancelledError(), traceback=_trace())
            else:
                outcome = Outcome(run, error=stopped)
        except BaseException as exc:  # (SystemExit too; each is the job's failure)
            outcome = Outcome(run, error=exc, traceback=_trace())
        finally:
            if timer is not None:
                timer.cancel()
        if run.stopped is not None and not isinstance(outcome.error, Interrupted):
            # It swallowed its cancellation: the stop stands (its lease may be lost).
            outcome = Outcome(run, error=run.stopped)
        try:
            job.cleanup()
        except Exception:
            log.exception("cleanup() of job %d raised", mjob.id)
        self._done.put(outcome)
        self._wake()


def _trace() -> str:
    return traceback.format_exc()


class _Canceller:
    """Cancels one run's task on its loop, from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, run: Run) -> None:
        self.loop = loop
        self.run = run
        self.task: asyncio.Task[object] | None = None

    def soon(self) -> None:
        # (call_soon_threadsafe takes no lock: safe from a signal handler.)
        self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        # else: _attempt has not begun; it sees run.stopped when it does
