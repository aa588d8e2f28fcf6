"""Holding: which file `<path>-wal` and `<path>-shm` serve, said by every process using them.

SQLite finds a database's log and its index by the database's path, and nothing in either
says which file they belong to. After `mv other.sqlite q.sqlite`, a process that opened
q.sqlite while processes still had the file that was there before would share their log:
it would read their commits as if they were its file's pages, and their checkpoints would
copy its commits into their (unlinked) file. So every process that has a queue file open
holds a shared lock on one byte of `<path>-lock` that stands for that file (its device and
inode), and `<path>-lock` records the file the log last served. (`<path>` resolved, as
SQLite resolves it to find the log.) A process opening the path refuses, having read and
written nothing through the log, while a byte of another file is held, or while the log
still holds commits of another file.

The locks are Linux's open-file-description locks: the kernel drops them when the holder
dies, and closing some other descriptor of the file (the writer gate's) leaves them alone.
Where they do not exist, or `<path>-lock` cannot be opened (nor made), nothing is checked.

`<path>-lock` must exist before anything is read through the log, so an opener makes it if it
is missing, before it knows whether the file is a queue at all. So that a file refused (no
queue, another application's database, a newer schema, damage) or only read leaves no file
behind, an opener that made it writes a mark in it, "made by an opener, no file recorded",
and every opener that recorded nothing removes a `<path>-lock` that holds just that mark when
it lets go, if no other process holds it. Why that is safe (no process ever holds a byte of a
removed `<path>-lock`, and no record, nor an empty lock file an earlier liteq made, is lost):
- the mark is written, the record written over it, and the file removed only while byte 0 is
  held exclusively; the mark only over an empty file, the removal only with no other byte held
  and the file holding the mark alone;
- every opener, once it holds byte 0, checks that its descriptor is still the file at the path
  (else it opens the one there), and sets its own byte before it lets go of byte 0.
So an opener that took byte 0 before a removal holds its byte when the remover looks (which
then keeps the file), and one that takes it after finds its file removed and opens again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import time
import weakref
from collections.abc import Iterator
from typing import Final

from liteq.errors import StoreError, StoreMoved

log = logging.getLogger("liteq.store")

_OFD: Final = hasattr(fcntl, "F_OFD_GETLK") and hasattr(fcntl, "F_OFD_SETLK")
_GETLK: Final[int] = getattr(fcntl, "F_OFD_GETLK", 0)
_SETLK: Final[int] = getattr(fcntl, "F_OFD_SETLK", 0)
#: struct flock (type, whence, start, length, pid, with the C struct's padding): pid 0.
_FLOCK: Final = struct.Struct("hhqqi4x")
#: The record at the start of `<path>-lock`: the device and inode the log last served.
_RECORD: Final = struct.Struct("<8sQQ")
_MAGIC: Final = b"liteqlog"
#: Byte 0 is taken, exclusively, while an opener reads and writes the record; each file's
#: byte lies above it.
_SLOTS: Final = (1 << 62) - 1
#: A WAL file's header and a frame's header, in bytes; the magic number (its low bit varies).
_WAL_HEADER, _FRAME_HEADER, _WAL_MAGIC = 32, 24, 0x377F0682
#: Why a file may be opened but not for writing (its mode, a read-only file system).
_NO_WRITE: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: The mark of a `<path>-lock` an opener made, in which no file is recorded (yet).
_UNCLAIMED: Final = _RECORD.pack(b"liteqnew", 0, 0)
#: How long letting go waits for byte 0 before it leaves such a `<path>-lock` be.
_REMOVE_WAIT: Final = 1.0

Identity = tuple[int, int]  # (st_dev, st_ino)


def _slot(identity: Identity) -> int:
    dev, ino = identity
    return 1 + (ino ^ (dev << 32)) % _SLOTS


class Holding:
    """This process's hold on the log of one queue file, for one store object."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: Identity | None = None
        self._writable = False
        self._timeout = 0.0
        #: Whether this hold recorded its file: if not, letting go removes a `<path>-lock`
        #: that holds just the mark of an opener's (see the module's docstring).
        self._settled = False
        self._closer: weakref.finalize[[int], Holding] | None = None

    def check_unheld(self) -> None:
        """Raise StoreMoved if processes hold the log of a file that was at the path (which
        names no file now): before a new file is made there."""
        if not _OFD:
            return
        with contextlib.suppress(OSError):
            fd = os.open(f"{_real(self.path)}-lock", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _held(fd, 1, None):
                    raise StoreMoved(f"{self.path} was deleted while {_still_open(self.path)}")
            finally:
                os.close(fd)

    def take(self, identity: Identity, mode: int, timeout: float) -> bool:
        """Hold `identity`'s byte, before anything is read through the log; return whether it
        is held. A missing `<path>-lock` is made (with `mode`); where it can be neither made
        nor opened (a read-only directory), nothing is checked.

        Raises StoreMoved, holding nothing, if processes hold the log for another file or it
        still holds another file's commits. The file is not recorded as the one the log
        serves until `settle`."""
        self.release()
        if not _OFD:
            return False
        real = _real(self.path)
        lock_path = f"{real}-lock"
        deadline = time.monotonic() + timeout
        while True:
            opened = _open(lock_path, mode)
            if opened is None:
                return False
            fd, writable, made = opened
            try:
                _lock(fd, fcntl.F_WRLCK if writable else fcntl.F_RDLCK, deadline, lock_path)
                try:
                    linked = _linked(fd, lock_path)
                    if linked:
                        if made and os.fstat(fd).st_size == 0:  # (not if one settled first)
                            os.pwrite(fd, _UNCLAIMED, 0)
                        self._register(fd, identity, real)
                finally:
                    _unlock(fd, 0, 1)
            except BaseException:
                try:
                    if writable:
                        _remove_if_unused(fd, lock_path)
                finally:
                    os.close(fd)  # (which drops its locks)
                raise
            if linked:
                break
            os.close(fd)  # removed by an opener that was refused: open the one there now
        self._fd, self._identity, self._writable = fd, identity, writable
        self._timeout, self._settled = timeout, False
        # A store dropped without close() must not leak the descriptor.
        self._closer = weakref.finalize(self, os.close, fd)
        return True

    def _register(self, fd: int, identity: Identity, real: str) -> None:
        slot = _slot(identity)
        wal = f"{real}-wal"
        # Our byte first, then a look at the others': of two processes opening different
        # files at once, the one that looks last sees the other.
        _set(fd, fcntl.F_RDLCK, slot, 1)
        if _held(fd, 1, slot) or _held(fd, slot + 1, None):
            raise StoreMoved(f"{self.path} was replaced while {_still_open(self.path)}")
        recorded = _recorded(fd)
        if recorded is not None and recorded != identity and _log_has_commits(wal):
            raise StoreMoved(
                f"{self.path} was replaced while processes had the old file open, and its "
                f"log, {wal}, still holds commits of the old file (was a process killed?): "
                "to keep them, put the old file back at the path; to use the file that is "
                f"there without them, stop every process of the old file, then delete {wal} "
                f"and {real}-shm"
            )

    def settle(self) -> None:
        """The file is a queue and is about to be written: record it as the file the log
        serves (before its first commit can reach the log, or after a power loss the log
        would look like another file's). No process of another file can have taken the log
        meanwhile: this hold's byte keeps them out."""
        fd, identity = self._fd, self._identity
        if fd is None or identity is None or not self._writable:
            return
        _lock(fd, fcntl.F_WRLCK, time.monotonic() + self._timeout, f"{_real(self.path)}-lock")
        try:
            if _recorded(fd) != identity:
                os.pwrite(fd, _RECORD.pack(_MAGIC, *identity), 0)
                os.fsync(fd)
        finally:
            _unlock(fd, 0, 1)
        self._settled = True  # (a queue's `<path>-lock`: it stays)

    def serves_mine(self) -> bool:
        """Whether the log still serves the file this holds (True when nothing is known):
        only then may its commits be copied into that file."""
        fd = self._fd
        if fd is None:
            return True
        with contextlib.suppress(OSError):
            recorded = _recorded(fd)
            return recorded is None or recorded == self._identity
        return False

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """Around closing the connection: one process at a time. SQLite removes `-wal` and
        `-shm` when the last connection closes, seen as the only one left; two closing at
        once each see the other and both leave them."""
        fd = self._fd
        taken = False
        if fd is not None and self._writable:
            with contextlib.suppress(StoreError):
                lock_path = f"{_real(self.path)}-lock"
                _lock(fd, fcntl.F_WRLCK, time.monotonic() + _REMOVE_WAIT, lock_path)
                taken = True
        try:
            yield
        finally:
            if taken and fd is not None:
                with contextlib.suppress(OSError):
                    _unlock(fd, 0, 1)

    def release(self) -> None:
        """Let go (after the connection is closed); without having recorded its file,
        remove `<path>-lock` if it holds just an opener's mark and no other process holds
        it."""
        closer, self._closer = self._closer, None
        fd, remove = self._fd, self._writable and not self._settled
        self._fd = self._identity = None
        self._writable = False
        if closer is None:
            return
        try:
            if remove and fd is not None:
                # Our hold first (the connection is closed): of two letting go at once, each
                # would otherwise see the other's and leave the file to it.
                with contextlib.suppress(OSError):
                    _unlock(fd, 1, 0)
                _remove_if_unused(fd, f"{_real(self.path)}-lock")
        finally:
            closer()  # closes the descriptor, which drops its locks

    def forget(self) -> None:
        """In a child after fork(): close this copy of the descriptor. The lock belongs to
        the open file description, which the parent still holds (and it alone may remove
        `<path>-lock`)."""
        self._writable = False
        self.release()


def _open(lock_path: str, mode: int) -> tuple[int, bool, bool] | None:
    """A descriptor of `<path>-lock`, whether it is open for writing, and whether this call
    made the file; None where it is missing and cannot be made, or cannot be opened."""
    while True:
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(lock_path, flags, mode), True, True
        except FileExistsError:
            cannot_make = None
        except OSError as exc:  # a read-only directory or file system: open the one there
            cannot_make = exc
        try:
            try:
                return os.open(lock_path, os.O_RDWR | os.O_CLOEXEC), True, False
            except OSError as exc:
                if exc.errno not in _NO_WRITE:
                    raise
                # A reader without write access to it: it still checks.
                return os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC), False, False
        except FileNotFoundError:
            if cannot_make is None:
                continue  # removed since: make it again
            log.info("cannot tell which file %s serves: %s", lock_path, cannot_make)
            return None
        except OSError as exc:
            log.info("cannot tell which file %s serves: %s", lock_path, exc)
            return None


def _linked(fd: int, lock_path: str) -> bool:
    """Whether `fd` is still the file at `lock_path` (not one a refused opener removed)."""
    mine = os.fstat(fd)
    try:
        there = os.stat(lock_path)
    except FileNotFoundError:
        return False
    return mine.st_nlink > 0 and (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _remove_if_unused(fd: int, lock_path: str) -> None:
    """Remove `<path>-lock` if it holds just an opener's mark and no other process holds a
    byte of it (see the module's docstring); else leave it."""
    try:
        _lock(fd, fcntl.F_WRLCK, time.monotonic() + _REMOVE_WAIT, lock_path)
    except StoreError:
        return  # (in use all that time: another process holds it, or is about to)
    try:
        unclaimed = os.pread(fd, _RECORD.size + 1, 0) == _UNCLAIMED
        if unclaimed and not _held(fd, 1, None) and _linked(fd, lock_path):
            os.unlink(lock_path)
    except OSError as exc:
        log.info("left %s: %s", lock_path, exc)
    finally:
        _unlock(fd, 0, 1)


def _real(path: str) -> str:
    # Where SQLite puts `-wal` and `-shm`: beside the file the path resolves to.
    return os.path.realpath(path)


def _still_open(path: str) -> str:
    return (
        "processes still have the old file open: stop them first (they use its log, "
        f"{_real(path)}-wal and -shm, which no other file may share; nothing was changed)"
    )


def _flock(kind: int, start: int, length: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


def _set(fd: int, kind: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, _SETLK, _flock(kind, start, length))


def _unlock(fd: int, start: int, length: int) -> None:
    _set(fd, fcntl.F_UNLCK, start, length)


def _held(fd: int, start: int, end: int | None) -> bool:
    """Whether another open file description locks a byte in [start, end) (None: to the
    end of the file and beyond)."""
    if end is not None and end <= start:
        return False
    length = 0 if end is None else end - start  # (0: to the end)
    got = fcntl.fcntl(fd, _GETLK, _flock(fcntl.F_WRLCK, start, length))
    return bool(_FLOCK.unpack(got)[0] != fcntl.F_UNLCK)


def _lock(fd: int, kind: int, deadline: float, name: str) -> None:
    """Take byte 0, waiting until `deadline` (time.monotonic()) at the latest: each opener
    holds it briefly."""
    pause = 1e-4
    while True:
        try:
            _set(fd, kind, 0, 1)
            return
        except (BlockingIOError, PermissionError):  # (EAGAIN, or EACCES on some systems)
            if time.monotonic() > deadline:
                raise StoreError(f"{name} stayed locked past the busy timeout") from None
            time.sleep(pause)
            pause = min(2 * pause, 0.01)


def _recorded(fd: int) -> Identity | None:
    data = os.pread(fd, _RECORD.size, 0)
    if len(data) != _RECORD.size:
        return None
    magic, dev, ino = _RECORD.unpack(data)
    return (dev, ino) if magic == _MAGIC else None


def _log_has_commits(wal_path: str) -> bool:
    """Whether a WAL file holds a frame SQLite would read: its first frame carries the
    header's salt. (Reading the `-wal` file is safe: SQLite takes no lock on it.)"""
    try:
        fd = os.open(wal_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        header = os.pread(fd, _WAL_HEADER, 0)
        frame = os.pread(fd, _FRAME_HEADER, _WAL_HEADER)
        if len(header) < _WAL_HEADER or len(frame) < _FRAME_HEADER:
            return False
        magic, _version, page_size = struct.unpack(">III", header[:12])
        if magic | 1 != _WAL_MAGIC | 1:
            return False
        page_size = page_size if page_size != 1 else 65536
        whole = os.fstat(fd).st_size >= _WAL_HEADER + _FRAME_HEADER + page_size
        return whole and frame[8:16] == header[16:24]
    finally:
        os.close(fd)
