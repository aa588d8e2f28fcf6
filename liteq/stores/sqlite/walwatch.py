"""WalWatch: the kernel tells an idle worker that some process wrote the queue's log.

Every commit to a queue file in WAL mode writes `<file>-wal`, whoever commits: liteq, an
application's own sqlite3 connection, Django. On Linux, inotify reports those writes, so
an idle worker need not poll `PRAGMA data_version` to learn of them. The watch is on the
file's directory, filtered by name: SQLite deletes `-wal` when its last connection closes
and makes a new one at the next write, and a watch on the old inode would hear nothing.

The report is a hint, never the truth: it comes when the log is written, a moment before
the commit becomes visible to readers (SQLite publishes it through the shared-memory index,
which makes no event), so the Waker re-reads the marker until it moves. Where inotify is
missing (not Linux, the per-user limit reached, LITEQ_NO_INOTIFY set) `want` says so and
the Waker polls as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final

log = logging.getLogger("liteq.store")

#: Set (to anything but "" or "0") to make idle workers poll instead of using inotify.
DISABLE_ENV: Final = "LITEQ_NO_INOTIFY"

# From <sys/inotify.h>.
_IN_MODIFY: Final = 0x2
_IN_MOVED_TO: Final = 0x80
_IN_CREATE: Final = 0x100
_IN_Q_OVERFLOW: Final = 0x4000
_IN_IGNORED: Final = 0x8000
_IN_ONLYDIR: Final = 0x01000000
_IN_EXCL_UNLINK: Final = 0x04000000
_IN_CLOEXEC: Final = 0o2000000
_MASK: Final = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO | _IN_ONLYDIR | _IN_EXCL_UNLINK
_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE: Final = 64 * (_HEADER.size + 256)  # many events per read, names up to 255 bytes

#: How long the listening thread pauses after events of other files only: what a report of
#: the log may be delayed by in a directory where another file is written all the time.
_OTHERS_PAUSE: Final = 0.005

_LIBC: ctypes.CDLL | None = None
_WATCHES: weakref.WeakSet[WalWatch] = weakref.WeakSet()


def _libc() -> ctypes.CDLL | None:
    """The C library, if it has inotify (Linux); None elsewhere."""
    global _LIBC  # loaded once per process, on first use
    if _LIBC is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            return None
        _LIBC = libc
    return _LIBC


class _Listening:
    """What the listening thread shares with its WalWatch (never the watch itself, so a
    store dropped without close() is collected, and its finalizer ends the thread)."""

    def __init__(self, fd: int, wd: int, log_name: bytes, nudge: Callable[[], None]) -> None:
        self.fd = fd
        self.wd = wd
        self.log_name = log_name
        self.nudge: Callable[[], Callable[[], None] | None]
        try:  # (a method: held weakly, for the thread must not keep its store alive)
            self.nudge = weakref.WeakMethod(nudge)
        except TypeError:
            self.nudge = lambda: nudge
        self.wanted = threading.Event()
        self.pid = os.getpid()
        self.stopping = False
        self.alive = True

    def stop(self) -> None:
        """End the thread: removing the watch queues IN_IGNORED, which its read returns."""
        if self.stopping or self.pid != os.getpid():  # (a forked child's copy: see _forget)
            return
        self.stopping = True
        libc = _libc()
        if libc is not None:
            libc.inotify_rm_watch(self.fd, self.wd)
        self.wanted.set()

    def run(self) -> None:
        try:
            while True:
                self.wanted.wait()
                if self.stopping:
                    break
                data = os.read(self.fd, _READ_SIZE)
                relevant, lost = self._parse(data)
                if lost:
                    break
                if relevant:
                    # Read no more until a waiter wants it: meanwhile the kernel keeps the
                    # next events (merging repeats), so a busy queue costs no thread time.
                    self.wanted.clear()
                    if not self._nudge():
                        break
                else:
                    # Another file of the directory is being written: read its events in
                    # batches (the kernel merges repeats meanwhile), not one by one.
                    time.sleep(_OTHERS_PAUSE)
        except OSError as exc:
            log.debug("watching the log of a queue file stopped: %s", exc)
        finally:
            self.alive = False
            self._nudge()  # the waiter notices: it arms a new watch, or polls
            os.close(self.fd)

    def _parse(self, data: bytes) -> tuple[bool, bool]:
        """(whether the log may have been written, whether the watch is gone)."""
        relevant = lost = False
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, size = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size : offset + _HEADER.size + size].rstrip(b"\0")
            offset += _HEADER.size + size
            if mask & _IN_Q_OVERFLOW:
                relevant = True  # events were dropped: one of them may have been ours
            elif mask & _IN_IGNORED and wd == self.wd:
                lost = True  # removed: by stop(), or the directory is gone
            elif name == self.log_name:
                relevant = True
        return relevant, lost

    def _nudge(self) -> bool:
        nudge = self.nudge()
        if nudge is None:
            return False
        nudge()
        return True


class WalWatch:
    """Reports writes to `<path>-wal` by any process, from a thread of its own started by
    the first `want` (one inotify instance per watch, closed with it).

    Fork-safe: a child never reads its parent's instance; its first `want` arms its own.
    """

    def __init__(self, path: str) -> None:
        real = os.path.realpath(path)  # (SQLite puts the log beside the file a link names)
        self.directory = os.path.dirname(real)
        self.log_name = os.fsencode(os.path.basename(real) + "-wal")
        self._listening: _Listening | None = None
        self._unavailable = False
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[[], WalWatch] | None = None
        _WATCHES.add(self)

    def want(self, nudge: Callable[[], None]) -> bool:
        """Call `nudge` (from another thread) once the log may have been written after
        this call; True if so armed, False if the caller must poll instead.

        Call it before each read of what the commits change, so none can slip between the
        read and the wait; one nudge answers each call (or several calls before it).
        """
        listening = self._listening
        if listening is None or not listening.alive or listening.pid != os.getpid():
            listening = self._arm(nudge)
            if listening is None:
                return False
        listening.wanted.set()
        return True

    def _arm(self, nudge: Callable[[], None]) -> _Listening | None:
        with self._lock:
            listening = self._listening
            if listening is not None and listening.alive and listening.pid == os.getpid():
                return listening
            if self._unavailable or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
                return None
            listening = self._start(nudge)
            if listening is None:
                self._unavailable = True  # (once per watch: no retry on every wait)
                return None
            self._listening = listening
            self._finalizer = weakref.finalize(self, listening.stop)
            return listening

    def _start(self, nudge: Callable[[], None]) -> _Listening | None:
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(_IN_CLOEXEC)
        if fd < 0:
            _unavailable(self.directory, ctypes.get_errno())
            return None
        wd = libc.inotify_add_watch(fd, os.fsencode(self.directory), _MASK)
        if wd < 0:
            _unavailable(self.directory, ctypes.get_errno())
            os.close(fd)
            return None
        listening = _Listening(fd, wd, self.log_name, nudge)
        name = f"liteq-walwatch-{os.path.basename(self.directory)}"
        threading.Thread(target=listening.run, name=name, daemon=True).start()
        return listening

    def armed(self) -> bool:
        """Whether writes to the log are being watched in this process now."""
        listening = self._listening
        return listening is not None and listening.alive and listening.pid == os.getpid()

    def close(self) -> None:
        """Stop watching (a later `want` arms again)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()  # (runs listening.stop once)
            self._listening = None
            self._finalizer = None
            self._unavailable = False

    def _forget(self) -> None:
        """In a child after fork(): its copy of the instance is its parent's (same open
        file), so it only closes it; the thread did not come across."""
        listening = self._listening
        if listening is not None and listening.pid != os.getpid() and listening.alive:
            listening.alive = False
            try:
                os.close(listening.fd)
            except OSError as exc:  # (already closed by a thread that ended mid-fork)
                if exc.errno != errno.EBADF:
                    raise
        self._listening = None
        self._finalizer = None
        self._lock = threading.Lock()


def _unavailable(directory: str, code: int) -> None:
    hint = ""
    if code in (errno.EMFILE, errno.ENOSPC):
        hint = " (raise fs.inotify.max_user_instances or max_user_watches)"
    log.info(
        "idle workers poll %s for commits: inotify is unavailable: %s%s",
        directory,
        os.strerror(code),
        hint,
    )


def _after_fork_in_child() -> None:
    for watch in list(_WATCHES):
        watch._forget()  # (this module's own fork hook)


os.register_at_fork(after_in_child=_after_fork_in_child)
