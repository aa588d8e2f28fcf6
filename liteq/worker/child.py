"""A worker process as its supervisor knows it (its job slot, its ready pipe), and its life
after fork(): what `liteq work`'s supervisor forks."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import mmap
import os
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from liteq.stores import connect
from liteq.stores.contract import Store
from liteq.stores.sqlite import open_queue_files
from liteq.worker.exits import (
    EXIT_CRASHED,
    EXIT_MEMORY,
    EXIT_SIGNAL,
    EXIT_STARTUP_FAILED,
)
from liteq.worker.loop import Worker
from liteq.worker.options import WorkerOptions

# (the supervisor's logger: these lines are about the processes it runs)
log = logging.getLogger("liteq.supervisor")

#: The signals the supervisor handles and forwards; a child drops its handlers for them.
HANDLED = frozenset({signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


class Spawner(Protocol):
    """What a child takes from the supervisor that forked it."""

    url: str
    imports: Sequence[str]
    verbose: bool
    worker_options: WorkerOptions


def new_slot() -> mmap.mmap:
    """A job slot for a child to be forked (anonymous memory is shared across fork())."""
    return mmap.mmap(-1, SLOT.size)


#: A child's job slot: the id of the job it runs now (0: none; SEVERAL: more than one, each a
#: coroutine job), in memory shared with its supervisor, which reads it once the child is
#: dead. A store write per job would cost.
SLOT = struct.Struct("q")


@dataclass
class Child:
    """A worker process as its supervisor knows it."""

    pid: int
    started: float
    #: The child's start as owners name it (None if it was gone before it could be read).
    start: str | None
    slot: mmap.mmap
    #: The read end of the pipe the child writes one byte to when it is ready (None once
    #: read, or closed).
    ready_fd: int | None
    ready: bool = False
    retiring: bool = False
    #: HUP sent for a rolling restart (it is on its way out).
    leaving: bool = False
    #: Why the supervisor killed it (its memory), if it did.
    killed_for: str | None = None
    #: Its autoscaled pool ("": the fixed pool of --processes).
    pool: str = ""
    #: Told to stop by the autoscaler (TERM): its exit is no death and has no replacement.
    scaled_down: bool = False

    def running(self) -> int | None:
        """The job the child runs now (or ran when it died), if it runs just one: a death
        is then that job's doing."""
        job_id: int = SLOT.unpack_from(self.slot)[0]
        return job_id if job_id > 0 else None

    def busy(self) -> bool:
        """Whether the child runs a job now (or several), or did when it died."""
        return bool(SLOT.unpack_from(self.slot)[0])

    def close(self) -> None:
        """Release what the supervisor holds of it (once it is reaped, or in a sibling)."""
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        self.slot.close()


def how_it_died(child: Child, status: int) -> str:
    """How a child died, in words, for its job's error."""
    if child.killed_for is not None:
        return child.killed_for
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    code = os.waitstatus_to_exitcode(status)
    if code == EXIT_SIGNAL:  # (a worker exits so with a job only when it cannot stop it)
        return f"exit status {code}: the job could not be interrupted"
    return f"exit status {code}"


def child_main(
    supervisor: Spawner, pipe: tuple[int, int], slot: mmap.mmap, ready_fd: int, parent: int
) -> int:
    """A new worker's life after fork(), to its exit status: it drops the supervisor's
    signal handling and pipe, imports the application's modules, opens its own store, and
    tells its supervisor through `slot` which job it runs and through `ready_fd` when it is
    ready. `parent` is the supervisor's pid, read before fork(): one that died before this
    process could ask is seen as gone at once."""
    url = supervisor.url
    try:
        # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which
        # forwards it once (otherwise each worker would see it twice and stop at once).
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for fd in pipe:
            os.close(fd)
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # a pending TERM now ends it
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

    def ready() -> None:
        with contextlib.suppress(OSError):  # (a supervisor that died reads nothing)
            os.write(ready_fd, b"r")
        os.close(ready_fd)

    def running(job_id: int | None) -> None:
        SLOT.pack_into(slot, 0, job_id or 0)

    try:
        return worker.start(ready=ready, running=running)
    except BaseException:
        log.error("worker %d crashed:\n%s", os.getpid(), traceback.format_exc().rstrip())
        return EXIT_MEMORY if isinstance(sys.exc_info()[1], MemoryError) else EXIT_CRASHED


def _warn_of_other_queues(store: Store) -> None:
    """A jobs module that opened a queue of its own (a module-level SQLiteStore("x")) would
    send the jobs it enqueues there, not to this worker's queue: say so once."""
    file = store.file_info()
    ours = os.path.realpath(file.path) if file is not None else repr(store)
    for other in sorted(open_queue_files() - {ours}):
        log.warning(
            "an imported module opened the queue %s, not the one liteq work serves (%s): jobs "
            "it enqueues go there; write `store = liteq.connect()` in it to use the "
            "worker's queue (liteq work sets LITEQ_URL)",
            other,
            ours,
        )


def _watch_parent(worker: Worker, parent: int) -> None:
    """A worker whose supervisor died finishes its job and exits instead of living on alone.
    (It asks again every second: a stop asked before Worker.start() began is reset there.)"""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("worker %d: the supervisor %d is gone: finishing and exiting", os.getpid(), parent)
    while True:
        worker.stop(EXIT_SIGNAL)
        time.sleep(1.0)
