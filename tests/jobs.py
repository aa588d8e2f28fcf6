"""Job classes for the tests; importable, so worker processes can run them too."""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import time
from typing import Any, ClassVar

import liteq


class Noop(liteq.Job):
    def __init__(self, n: int = 0) -> None:
        self.n = n

    def run(self, job: liteq.ManagedJob) -> None:
        pass


class Record(liteq.Job):
    """Appends what it ran to a class-level list (in-process tests)."""

    ran: ClassVar[list[Any]] = []

    def __init__(self, tag: Any) -> None:
        self.tag = tag

    def run(self, job: liteq.ManagedJob) -> None:
        Record.ran.append(self.tag)


class Fails(liteq.Job):
    retry_backoff = 2.0

    def __init__(self, message: str = "boom") -> None:
        self.message = message

    def run(self, job: liteq.ManagedJob) -> None:
        raise RuntimeError(self.message)


class Waits(liteq.Job):
    """Returns WAIT_ASYNC; resolve_wait_async maps data to a status."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    def run(self, job: liteq.ManagedJob) -> liteq.Status:
        return liteq.Status.WAIT_ASYNC

    def resolve_wait_async(self, data: Any) -> liteq.Status:
        if data == "raise":
            raise ValueError("the callback data was bad")
        return liteq.Status(data)


class Coalesced(liteq.Job):
    def __init__(self, key: str) -> None:
        self.key = key

    def run(self, job: liteq.ManagedJob) -> None:
        pass

    def coalesce_id(self) -> str:
        return f"coalesced-{self.key}"


class WithOptions(liteq.Job):
    def run(self, job: liteq.ManagedJob) -> None:
        pass

    def enqueue_options(self) -> liteq.EnqueueOptions:
        return {"queue": "from-job", "priority": 7, "max_attempts": 4}


class DefaultOptions(liteq.Job):
    """Gives enqueue options of its own, which are the defaults."""

    def run(self, job: liteq.ManagedJob) -> None:
        pass

    def enqueue_options(self) -> liteq.EnqueueOptions:
        return {"queue": "default", "priority": 0}


class Sleeps(liteq.Job):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        time.sleep(self.seconds)


class Logs(liteq.Job):
    """Appends a JSON line per run (pid, start, end) to a file: for overlap checks across processes."""

    def __init__(self, path: str, seconds: float = 0.0) -> None:
        self.path = path
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        start = time.time()
        time.sleep(self.seconds)
        line = json.dumps({"id": job.id, "pid": os.getpid(), "start": start, "end": time.time()})
        with open(self.path, "a") as f:
            f.write(line + "\n")


class Pickled(liteq.Job):
    pickle_state = True

    def __init__(self, value: Any) -> None:
        self.value = value

    def run(self, job: liteq.ManagedJob) -> None:
        Record.ran.append(self.value)


class Strict(liteq.Job):
    """Its state must have 'count' as an int: a state that no longer fits fails to decode."""

    def __init__(self, count: int) -> None:
        self.count = count

    def run(self, job: liteq.ManagedJob) -> None:
        pass

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> liteq.Job:
        if not isinstance(state.get("count"), int):
            raise ValueError(f"count must be an int, got {state.get('count')!r}")
        return cls(state["count"])


class Touch(liteq.Job):
    """Changes a file's mtime, then sleeps: a deploy landing while a job runs."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        os.utime(self.path, (1, 1))
        time.sleep(self.seconds)


def trace(path: str, job_id: int, event: str, attempt: int = 0) -> None:
    """Append one line atomically (O_APPEND, a single write) to a trace file."""
    line = json.dumps(
        {"id": job_id, "pid": os.getpid(), "event": event, "t": time.time(), "attempt": attempt}
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Traced(liteq.Job):
    """Records its start and end with its pid: for overlap and exactly-once checks."""

    def __init__(self, path: str, seconds: float = 0.0) -> None:
        self.path = path
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        time.sleep(self.seconds)
        trace(self.path, job.id, "end", job.attempts)


class SlowFirst(liteq.Job):
    """Sleeps long on its first attempt only: for interrupts and hung-job rescue."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start")
        if job.attempts == 1:
            self.before_sleep()
            time.sleep(self.seconds)
        trace(self.path, job.id, "end")

    def before_sleep(self) -> None:
        pass


class ExitsOnce(liteq.Job):
    """Kills its own process on the first attempt: `os._exit(9)`, or a real segfault."""

    def __init__(self, path: str, how: str = "exit") -> None:
        self.path = path
        self.how = how

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start")
        if job.attempts == 1:
            if self.how == "segfault":
                faulthandler.disable()  # die quietly of the signal
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            os._exit(9)
        trace(self.path, job.id, "end")


class Niceness(liteq.Job):
    """Writes the niceness of the process that runs it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, job: liteq.ManagedJob) -> None:
        with open(self.path, "w") as f:
            f.write(str(os.nice(0)))


class Hog(liteq.Job):
    """Keeps `mb` MiB alive in its process: the next memory pre-flight sees it."""

    kept: ClassVar[list[bytearray]] = []

    def __init__(self, mb: int) -> None:
        self.mb = mb

    def run(self, job: liteq.ManagedJob) -> None:
        Hog.kept.append(bytearray(self.mb << 20))


class Unstoppable(SlowFirst):
    """On its first attempt blocks SIGALRM and sleeps, like code stuck outside Python."""

    def before_sleep(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})


class Stoppable(liteq.Job):
    """Sleeps long on its first attempt, and records when something stops it there."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        trace(self.path, job.id, "start", job.attempts)
        if job.attempts == 1:
            try:
                time.sleep(self.seconds)
            except BaseException:
                trace(self.path, job.id, "stopped", job.attempts)
                raise
        trace(self.path, job.id, "end", job.attempts)


class Described(liteq.Job):
    """A job whose description is whatever it is given (markup, say)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, job: liteq.ManagedJob) -> None:
        pass

    def description(self) -> str:
        return self.text


class StopsItself(liteq.Job):
    """Stops its own process (SIGSTOP) as it ends, the next jobs of its batch still held:
    a worker paused past its lease (a frozen VM, a swap storm)."""

    def run(self, job: liteq.ManagedJob) -> None:
        if job.attempts == 1:  # (run again elsewhere, it ends)
            os.kill(os.getpid(), signal.SIGSTOP)
