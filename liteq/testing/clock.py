"""Clock: a store clock that moves only when a test moves it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from liteq.stores.contract import Store


class Clock:
    """A clock for a store (epoch seconds, as `store.clock` is) that stands still until
    moved: `advance(3600)` makes a job delayed by an hour, or a retry's backoff, due for
    the next `drain`.

        clock = Clock()
        store = liteq.MemoryStore(clock=clock)     # or: with clock.drive(store): ...
        store.enqueue(Reminder(7), delay=3600)
        clock.advance(3600)
        drain(store)

    It starts at `start` (an aware datetime or epoch seconds; default: the real time now).
    It drives a store's due times, backoffs and leases; not `time.time()` in a job's own
    code, nor the monotonic clocks a worker times `max_runtime` with.
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        self._lock = threading.Lock()
        self._now = time.time() if start is None else _epoch(start)

    def __call__(self) -> float:
        """The time now, in epoch seconds (what a store calls)."""
        return self._now

    @property
    def now(self) -> datetime:
        """The time now, as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, UTC)

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move forward by `seconds` (a number or a timedelta, not negative); return the
        new time. ValueError for a negative step: use `set` to go back."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
        if isinstance(step, bool) or not isinstance(step, int | float) or step != step:
            raise TypeError(f"advance takes seconds or a timedelta, not {seconds!r}")
        if step < 0:
            raise ValueError(f"advance moves forward, not by {seconds!r}: use set() to go back")
        with self._lock:
            self._now += step
        return self.now

    def set(self, when: datetime | float) -> None:
        """Set the time to `when`: an aware datetime, or epoch seconds."""
        now = _epoch(when)
        with self._lock:
            self._now = now

    @contextlib.contextmanager
    def drive(self, store: Store) -> Iterator[Clock]:
        """Make this clock the store's for the block (the store's own `clock` attribute is
        replaced, then put back): for a store made elsewhere, as an application's
        module-level store is. A store made with `clock=` is driven for its whole life,
        its workers' registry too (which a store made elsewhere keeps on its own clock)."""
        before = store.clock
        store.clock = self
        try:
            yield self
        finally:
            store.clock = before

    def __repr__(self) -> str:
        return f"Clock({self.now.isoformat()})"


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"a naive datetime is ambiguous: give an aware one (e.g. tzinfo=UTC), not {when!r}"
            )
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or when != when:
        raise TypeError(f"a time is an aware datetime or epoch seconds, not {when!r}")
    return float(when)
