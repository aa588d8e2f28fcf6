"""Waking idle workers: a strategy each backend supplies.

A commit made through a store object rings its doorbell: a lock held while nobody rang,
the cheapest wait there is. A backend whose other processes also write adds a marker that
changes when they commit (SQLite: `PRAGMA data_version`), read when a watch reports that
they may have (SQLite on Linux: inotify on the write-ahead log), else polled.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

#: With a watch: how often the marker is read all the same, should a report never come.
SAFETY_POLL: Final = 1.0
#: A report comes a moment before the commit it reports can be read: the marker is read
#: again after a quarter of the time since the report (at least RECHECK_MIN), for up to
#: SAFETY_POLL, so a slow commit (a sync to disk, say) costs a quarter more, not a poll.
RECHECK_MIN: Final = 0.0005
#: A waiter woken again and again for nothing (workers of another queue busy in the same
#: file, say) waits between such wake-ups, from HOLDOFF_MIN doubling to HOLDOFF_MAX: the
#: claims it would make for nothing would slow theirs. A quiet spell resets it.
HOLDOFF_MIN, HOLDOFF_MAX = 0.001, 0.05


class Watch(Protocol):
    """Reports that other processes may have committed (see sqlite/walwatch.py)."""

    def want(self, nudge: Callable[[], None]) -> bool:
        """Call `nudge`, from any thread, once a commit may have been made after this
        call; True if armed to, False if the waiter must poll the marker instead."""

    def close(self) -> None:
        """Stop reporting (a later `want` starts again)."""


class Waker:
    """Wakes the idle workers of one store object.

    `marker`: a function whose value changes when another process commits (None: only
    this process writes). With a `watch`, the marker is read when the watch reports a
    commit, and every SAFETY_POLL seconds; without one (or where it is unavailable) it is
    polled every `poll` seconds for `busy_window` seconds after activity, and every
    `idle_poll` seconds after that: most wake-ups come in a burst, and a constant fast poll
    would cost an idle worker a share of a core.
    """

    def __init__(
        self,
        marker: Callable[[], object] | None = None,
        *,
        poll: float | None = None,
        idle_poll: float | None = None,
        busy_window: float = 2.0,
        watch: Watch | None = None,
    ) -> None:
        self._marker_of = marker
        self._poll = poll
        self._idle_poll = idle_poll
        self._busy_window = busy_window
        self._watch = watch
        self._bell = threading.Lock()
        self._bell.acquire()
        self._version = 0
        self._finished = 0
        self._seen: tuple[int, object] = (-1, None)
        self._busy_until = 0.0
        self._nudges = 0  # reports from the watch (its thread counts them)
        self._read_nudges = -1  # _nudges when the marker was last read,
        self._read_watched = False  # and whether the watch was armed then
        self._nudged_at = -math.inf  # the last report the marker did not show yet
        self._woken = False  # wait() said "changed" and no claim has said what it found
        self._fruitless_at = -math.inf
        self._holdoff = 0.0
        self._holdoff_until = 0.0

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

    def _nudge(self) -> None:
        """The watch reports that another process may have committed."""
        self._nudges += 1
        if self._bell.locked():
            try:  # noqa: SIM105 - as in ring
                self._bell.release()
            except RuntimeError:
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
        now = time.monotonic()
        if self._woken:  # woken for nothing: see HOLDOFF_MIN
            again = now - self._fruitless_at < 2 * HOLDOFF_MAX
            self._holdoff = min(max(2 * self._holdoff, HOLDOFF_MIN), HOLDOFF_MAX) if again else 0
            self._fruitless_at = now
            self._holdoff_until = now + self._holdoff
            self._woken = False
        self._seen, reported = self._read()
        if reported:  # (its commit may not be readable yet: see RECHECK_MIN)
            self._nudged_at = now

    def busy(self) -> None:
        """Jobs were claimed: more are likely soon."""
        self._busy_until = time.monotonic() + self._busy_window
        self._woken = False
        self._holdoff_until = 0.0

    def close(self) -> None:
        """Stop the watch, if any (it starts again if the store is used again)."""
        if self._watch is not None:
            self._watch.close()

    def _read(self) -> tuple[tuple[int, object], bool]:
        """Read the marker, the watch armed first (a commit after the read is reported);
        return it, and whether the watch reported a commit since the last read."""
        watch = self._watch
        watched = watch is not None and self._marker_of is not None and watch.want(self._nudge)
        nudges = self._nudges
        marker = self._marker()
        reported = watched and self._read_watched and nudges != self._read_nudges
        self._read_nudges, self._read_watched = nudges, watched
        return marker, reported

    def _changed(self, now: float) -> bool:
        """Whether the queue may have changed since saw_nothing()."""
        if self._version != self._seen[0]:
            return True  # a commit through this store: no need to read the marker
        if self._marker_of is None or now < self._holdoff_until:
            return False
        marker, reported = self._read()
        if marker != self._seen:
            return True
        if reported:  # a commit not readable yet, or one of this process's own
            self._nudged_at = now
        return False

    def _pause(self, now: float, remaining: float) -> float:
        """How long to wait for the bell before looking again."""
        if self._marker_of is None:
            return remaining
        if now < self._holdoff_until:
            return min(remaining, self._holdoff_until - now)
        if self._read_watched:
            since = now - self._nudged_at
            pause = max(RECHECK_MIN, since / 4) if since < SAFETY_POLL else SAFETY_POLL
            return min(remaining, pause)
        poll = self._poll
        if poll is None:
            return remaining
        if now > self._busy_until and self._idle_poll:
            poll = self._idle_poll
        return min(remaining, poll)

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True early once the queue may have changed since
        saw_nothing() (a commit here, or the marker moved).

        One waiting thread per store object is woken at once by a commit in this process;
        others sharing the object notice at their next poll or timeout.
        """
        now = time.monotonic()
        deadline = now + timeout
        while not self._changed(now):
            remaining = deadline - now
            if remaining <= 0:
                return False
            self._bell.acquire(timeout=self._pause(now, remaining))
            now = time.monotonic()
        self._busy_until = now + self._busy_window
        self._woken = True
        return True
