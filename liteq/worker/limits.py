"""A worker's limits, checked before each job: memory, and the code it runs."""

from __future__ import annotations

import os
import sys
import time
from typing import Final

import psutil

#: How often a worker asks its limits between jobs (reading memory figures is cheap, not
#: free; CodeWatch keeps a slower pace of its own).
MEMORY_CHECK_EVERY: Final = 0.1


class MemoryLimit:
    """Says when a worker should exit to let a fresh one start: less than `guarantee`
    bytes of memory available, or more than `max_rss` bytes used by this process."""

    def __init__(self, guarantee: int, max_rss: int | None) -> None:
        self.guarantee = guarantee
        self.max_rss = max_rss

    def exceeded(self) -> str | None:
        """Why to exit now, or None (the worker asks every MEMORY_CHECK_EVERY seconds)."""
        available = psutil.virtual_memory().available
        if available < self.guarantee:
            return (
                f"only {available >> 20} MiB of memory available (guarantee_memory is "
                f"{self.guarantee >> 20} MiB)"
            )
        if self.max_rss is not None:
            rss = psutil.Process().memory_info().rss
            if rss > self.max_rss:
                return f"this worker uses {rss >> 20} MiB (max_rss is {self.max_rss >> 20} MiB)"
        return None


class CodeWatch:
    """Notices when the source file of any imported module changes on disk."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._mtimes: dict[str, int] = {}
        self._next = 0.0
        self._changed: str | None = None
        self._scan(record=True)

    def _scan(self, *, record: bool) -> str | None:
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if not isinstance(path, str):
                continue
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            seen = self._mtimes.get(path)
            if seen is None or record:
                self._mtimes[path] = mtime  # newly imported: its code is current
            elif seen != mtime:
                return path
        return None

    def changed(self) -> str | None:
        """The path of a changed source file, checked at most once per `every` seconds."""
        now = time.monotonic()
        if self._changed is not None or now < self._next:
            return self._changed  # (once seen, a change is told again at each call)
        self._next = now + self.every
        self._changed = self._scan(record=False)
        return self._changed
