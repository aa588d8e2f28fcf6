"""Waking idle workers: a strategy each backend supplies.

A commit made through a store object rings its doorbell: a lock held while nobody rang,
the cheapest wait there is. A backend whose other processes also write adds a marker that
changes when they commit, polled (SQLite: `PRAGMA data_version`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Waker:
    """Wakes the idle workers of one store object.

    `marker`: a function whose value changes when another process commits (None: only
    this process writes). It is polled every `poll` seconds for `busy_window` seconds after
    activity, and every `idle_poll` seconds after that: most wake-ups come in a burst, and
    a constant fast poll would cost an idle worker a share of a core.
    """

    def __init__(
        self,
        marker: Callable[[], object] | None = None,
        *,
        poll: float | None = None,
        idle_poll: float | None = None,
        busy_window: float = 2.0,
    ) -> None:
        self._marker_of = marker
        self._poll = poll
        self._idle_poll = idle_poll
        self._busy_window = busy_window
        self._bell = threading.Lock()
        self._bell.acquire()
        self._version = 0
        self._finished = 0
        self._seen: tuple[int, object] = (-1, None)
        self._busy_until = 0.0

    def _marker(self) -> tuple[int, object]:
        external = self._marker_of
        return (self._version, None if external is None else external())

    def ring(self) -> None:
        """Something was committed through this store: wake a waiting worker now."""
        self._version += 1
        if self._bell.locked():  # (most often it is still ringing from the last commit)
            try:  # noqa: SIM105 - hot path: suppress() would build a context object
                self._bell.release()
            except RuntimeError:  # rung meanwhile by another thread
                pass

    def finished(self) -> None:
        """A job finished in another process (PostgreSQL's notification): `mark` moves,
        without waking the idle workers (nothing was queued)."""
        self._finished += 1

    def mark(self) -> object:
        """What changes when this store, or another process, may have finished a job: a
        result waits until it does (store.result), reading the job only then."""
        return (self._finished, self._marker())

    def saw_nothing(self) -> None:
        """A claim found no job: what wait() will compare with to see a change since."""
        self._seen = self._marker()

    def busy(self) -> None:
        """Jobs were claimed: more are likely soon."""
        self._busy_until = time.monotonic() + self._busy_window

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True early once the queue may have changed since
        saw_nothing() (a commit here, or the marker moved).

        One waiting thread per store object is woken at once by a commit in this process;
        others sharing the object notice at their next poll or timeout.
        """
        now = time.monotonic()
        deadline = now + timeout
        while self._marker() == self._seen:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            poll = self._poll
            if poll is not None and now > self._busy_until and self._idle_poll:
                poll = self._idle_poll
            self._bell.acquire(timeout=remaining if poll is None else min(remaining, poll))
        self.busy()
        return True
