"""The store a dashboard shows, and the queue file behind it, followed when it is replaced.

SQLite finds a file by its path once, when it opens it. After `mv restored.sqlite jobs.sqlite`
or `rm jobs.sqlite`, a connection opened before reads on in the old file: the dashboard would
show its jobs as the queue's until an action failed. So each request first asks SQLite
whether the path still names the file it has open (one stat). If not, the dashboard lets
that connection go and opens what the path holds now, saying so on every page; with no
queue there, pages say that instead of showing anything, and no file is created.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

from liteq.errors import LiteqError, StoreMoved
from liteq.stores.contract import Store
from liteq.stores.sqlite import SQLiteStore
from liteq.timeformat import when
from liteq.web.snapshot import Snapshot

#: How often, at most, a path whose file cannot be shown is tried again (each try opens it).
RETRY_EVERY: Final = 1.0


class Source:
    """The store shown now, its shared counts, and what the pages must say about it.

    `reopen` opens the queue at the path again (as the command opened it first: never
    creating a file); without it a replaced file is only reported.
    """

    def __init__(self, store: Store, reopen: Callable[[], Store] | None = None) -> None:
        self.store = store
        self.snapshot = Snapshot(store)
        #: Which file pages were made from: 0 for the first, one more at each replacement.
        #: Forms carry it, so that an action on a page of the old file does nothing.
        self.generation = 0
        #: What every page says since the file was replaced ("showing the new file").
        self.notice: str | None = None
        #: Why no page can be shown (no queue at the path), or None.
        self.gone: str | None = None
        self._reopen = reopen
        self._path = store.path if isinstance(store, SQLiteStore) else None
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._noticed = ""  # when the file was found gone from the path

    def check(self) -> str | None:
        """See whether the path still names the file shown, and follow it if not; return
        why nothing can be shown, or None. (Cheap: a stat, for a file; nothing otherwise.)"""
        if self._path is None:
            return None  # a server's queue cannot be swapped from under a connection
        with self._lock:
            if self.gone is None:
                if _in_place(self.store):
                    return None
                _let_go(self.store)
                self._noticed = _now()
                self.gone = self._missing()
                self._retry_at = 0.0  # look at what is there now at once
            if time.monotonic() >= self._retry_at:
                self._follow()
            return self.gone

    def _missing(self) -> str:
        return (
            f"No queue at {self._path} any more: the file was deleted or moved away "
            f"(noticed at {self._noticed}). Nothing is shown until a queue file is put back "
            "there."
        )

    def _follow(self) -> None:
        """Open what the path holds now, if anything (called with the lock held)."""
        self._retry_at = time.monotonic() + RETRY_EVERY
        path = self._path
        assert path is not None  # noqa: S101 - checked by the caller
        if not os.path.isfile(path):
            if self.gone is None or not self.gone.startswith("No queue at"):
                self.gone = self._missing()
            return  # (never opened: opening a missing file would make an empty queue)
        if self._reopen is None:
            self.gone = (
                f"{path} was replaced by another file (noticed at {self._noticed}): restart the "
                "dashboard to show it."
            )
            return
        try:
            store = self._reopen()
        except (LiteqError, OSError, ValueError) as exc:
            self.gone = (
                f"{path} was replaced by a file that cannot be shown (noticed at "
                f"{self._noticed}): {exc}"
            )
            return
        self.store = store
        self.snapshot = Snapshot(store)
        self.generation += 1
        self.gone = None
        self.notice = (
            f"The queue file {path} was replaced by another (noticed at {self._noticed}): "
            "showing the new file."
        )


def _in_place(store: Store) -> bool:
    """Whether the store's path still names the file its connection has open."""
    assert isinstance(store, SQLiteStore)  # noqa: S101 - only files are followed
    try:
        with store.file.reading() as conn:
            return store.file.in_place(conn)
    except StoreMoved:  # (found gone already, by a write or a reopening)
        return False
    except LiteqError:  # (locked, say: the page's own read says so, in its words)
        return True


def _let_go(store: Store) -> None:
    # The store's close() sees that the file left the path and gives its connection up as
    # such (nothing checkpointed into, or deleted from, the log at the path: the new file's).
    with contextlib.suppress(LiteqError):
        store.close()


def _now() -> str:
    return when(datetime.now())
