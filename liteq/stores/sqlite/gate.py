"""The writer gate: liteq's writers line up on an flock of `<path>-lock` before SQLite's lock.

SQLite's busy handler sleeps 1, 2, 5 … 100 ms between tries, so a writer that finds the
file locked sleeps through many of the holder's transactions. A writer that cannot take
the gate at once retries after 20 µs, doubling up to a longest pause, and takes SQLite's
lock only once it holds the gate. The kernel drops an flock when its holder dies.
Correctness never depends on the gate: SQLite's own lock and busy timeout still guard
every write, also against programs that know nothing of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Final

log = logging.getLogger("liteq.store")

# Two ways to wait at the gate, by who waits: PATIENT for a worker's own bookkeeping,
# PROMPT for a write a caller waits on (a transaction opened with prompt=True).
#: The longest pause between tries of a worker's claim loop: hand-offs between workers cost
#: the next one its page cache, so they need not be quick.
PATIENT: Final = 1e-3
#: ... and of a write a caller waits on (an enqueue from a web request, say), which would
#: otherwise lose the gate again and again to busy workers.
PROMPT: Final = 100e-6

# A thread's sleeps may end up to its "timer slack" late (Linux: 50 µs by default), longer
# than the first pauses here: while a prompt write waits for the gate, its thread asks for
# precise sleeps, then gets its own slack back. Workers keep theirs.
_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30
_prctl: Callable[..., int] | None = None
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _precise_sleeps() -> int | None:
    """Set this thread's timer slack to 1 ns; return the slack to restore (None: unchanged)."""
    if _prctl is None:
        return None
    old = _prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    if old <= 1 or _prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0) != 0:
        return None
    return old


class Busy(Exception):
    """The gate stayed taken past the busy timeout."""


class Gate:
    """The writer gate of one queue file, for one store object."""

    def __init__(self, path: str) -> None:
        self.path = f"{path}-lock"
        self._fd: int | None = None
        self._closer: weakref.finalize[[int], Gate] | None = None

    def open(self, mode: int) -> None:
        """Open (creating with `mode`) the gate file; without one, writers rely on SQLite."""
        self.close()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            log.info("writing without a writer gate (%s): %s", self.path, exc)
            return
        self._fd = fd
        # A store dropped without close() must not leak the descriptor.
        self._closer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        """Close the descriptor (after fork() this closes the child's copy: a parent's
        flock stays)."""
        closer, self._closer = self._closer, None
        self._fd = None
        if closer is not None:
            closer()  # closes the descriptor, once

    def enter(self, max_pause: float, timeout: float) -> bool:
        """Take the gate; False if there is none (then SQLite alone makes writers wait).
        Raises Busy after `timeout` seconds."""
        fd = self._fd
        if fd is None:
            return False
        deadline = 0.0
        pause = 20e-6
        slack = None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + timeout
                        if max_pause <= PROMPT:  # a caller waits: try on time
                            slack = _precise_sleeps()
                    elif now > deadline:
                        raise Busy(f"waiting for {self.path}") from None
                    time.sleep(pause)
                    pause = min(pause * 2, max_pause)
                except OSError as exc:  # a file system without flock: go on without the gate
                    log.info("writing without a writer gate (%s): %s", self.path, exc)
                    self.close()
                    return False
                else:
                    return True
        finally:
            if slack is not None and _prctl is not None:
                _prctl(_PR_SET_TIMERSLACK, slack, 0, 0, 0)

    def leave(self) -> None:
        """Let the next writer in."""
        if self._fd is not None:  # (None if the store was closed meanwhile)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
