"""QueueFile: one process's connection to a queue file, opened and kept safely.

It refuses, having changed nothing, a file liteq must not use, and a file whose log is
another file's (holding.py); it stays with the file it first opened (a path that comes to
name another file is an error, never a silent write elsewhere); and it never has a
connection open across fork().
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal, cast

import apsw

from liteq.errors import StoreCorrupt, StoreError, StoreMoved
from liteq.stores.sqlite import queries, schema, stdlib
from liteq.stores.sqlite.gate import Busy, Gate
from liteq.stores.sqlite.holding import Holding

log = logging.getLogger("liteq.store")

#: Statements apsw keeps prepared per connection (its default is 100): it finds one by
#: comparing hashes with each kept one's, in turn, on every execute; liteq uses a dozen.
STATEMENT_CACHE: Final = 32
#: The page size of a new queue file unless one is asked for: smaller pages than SQLite's
#: 4 KiB mean fewer bytes written per commit for the usual small jobs (docs/performance.md).
PAGE_SIZE: Final = 1024
PAGE_SIZES: Final = frozenset(512 << n for n in range(8))  # what SQLite accepts
#: How much log a commit lets grow before it checkpoints: 4 MB, as SQLite's default of
#: 1,000 pages is with its usual 4 KiB pages (at liteq's 1 KiB pages, 4,096 of them). Rarer
#: checkpoints make enqueue_many faster; each holds the writers up longer (performance.md).
WAL_CHECKPOINT_BYTES: Final = 4 << 20
#: After a checkpoint that empties the WAL, SQLite truncates `-wal` to this size.
JOURNAL_LIMIT: Final = 64 << 20
_TOLD_PAGE_SIZE: set[str] = set()  # files whose page size differs from the one asked for

# No connection is open across fork(). SQLite keeps its locking state per file for the whole
# process, and the kernel's POSIX locks are not inherited: a child that opened its own
# connection beside an inherited one would believe it holds locks it does not, and the next
# process to open the file would think itself alone and reset the WAL under live writers.
# So before fork() every queue file closes its connection (each process reopens on first
# use), holding its mutex until the fork is done so that no thread reopens it meanwhile.
_FILES: weakref.WeakSet[QueueFile] = weakref.WeakSet()
_HELD: list[QueueFile] = []  # those whose mutex is held across the fork
#: Files that a connection this process inherited still has open (not one of liteq's, or
#: one caught mid-transaction): unsafe to open here.
_UNSAFE: set[str] = set()
#: Those connections, kept referenced: a collected one would be closed, touching the file.
_INHERITED: list[apsw.Connection | stdlib.Connection] = []


def _before_fork() -> None:
    for file in list(_FILES):
        file.mutex.acquire()
        _HELD.append(file)
        file.close_for_fork()


def _after_fork_in_parent() -> None:
    while _HELD:
        _HELD.pop().mutex.release()


def _after_fork_in_child() -> None:
    while _HELD:
        _HELD.pop().forked()
    inherited: list[apsw.Connection | stdlib.Connection] = [*apsw.connections()]
    inherited += stdlib.connections()
    for conn in inherited:
        _INHERITED.append(conn)
        if conn.filename:
            _UNSAFE.add(os.path.realpath(conn.filename))


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def open_queue_files() -> set[str]:
    """The real paths of the queue files this process's stores use."""
    return {os.path.realpath(file.path) for file in list(_FILES)}


class QueueFile:
    """This process's connection to one queue file (opened on first use, and again after
    close() or fork()), the mutex its users take turns on, and its writer gate."""

    def __init__(
        self,
        path: str,
        *,
        durability: Literal["normal", "full"],
        page_size: int | None,
        busy_timeout: float,
        readonly: bool = False,
        shared: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        # An application's database too: its tables beside liteq's, and Python's sqlite3
        # (the application's SQLite) instead of apsw's (stdlib.py says why).
        self.shared = shared
        self.durability = durability
        self.page_size = page_size
        self.busy_timeout = busy_timeout
        self.mutex = threading.RLock()
        self.gate = Gate(path)
        self.holding = Holding(path)
        self._session: tuple[apsw.Connection, apsw.Cursor] | None = None
        #: How many connections this process opened: a connection's data_version is its
        #: own, so two are compared only with the same count.
        self.opens = 0
        self._pid = -1
        self._identity: tuple[int, int] | None = None  # (device, inode): see _bind
        self._moved: str | None = None  # why nothing more is written: see _gone
        self._moved_flag = ctypes.c_int(0)  # SQLITE_FCNTL_HAS_MOVED answers here
        self._moved_flag_address = ctypes.addressof(self._moved_flag)
        _FILES.add(self)

    def session(self) -> tuple[apsw.Connection, apsw.Cursor]:
        """The connection, and the cursor its write transactions share (the mutex makes
        them take turns). Call with the mutex held."""
        # No os.getpid() here (a system call per transaction): no connection is open
        # across fork() (_before_fork).
        pair = self._session
        if pair is None:
            with self.errors():
                for attempt in range(3):
                    try:
                        conn = self._open()
                        break
                    except _Raced:
                        if attempt == 2:
                            raise
            self._pid = os.getpid()
            self.opens += 1
            pair = self._session = conn, conn.cursor()
        return pair

    @contextlib.contextmanager
    def reading(self) -> Iterator[apsw.Connection]:
        """The connection, for reads outside a write transaction."""
        with self.mutex, self.errors():
            yield self.session()[0]

    # -- opening ---------------------------------------------------------------------
    def _open(self) -> apsw.Connection:
        if self._moved is not None:
            raise StoreMoved(self._moved)
        if os.path.realpath(self.path) in _UNSAFE:
            raise StoreError(
                f"{self.path} was open in this process's parent when it forked, and SQLite "
                "cannot use that file safely in the child: close it before fork() and open "
                "it in the child only (or start children with multiprocessing's 'spawn')"
            )
        path = Path(self.path)
        if self.readonly:
            return self._open_to_read(path)
        if not path.exists():
            if self._identity is not None:
                raise self._gone("deleted")
            if not path.parent.is_dir():
                why = "is not a directory" if path.parent.exists() else "does not exist"
                raise StoreError(f"cannot create {self.path}: {path.parent} {why}")
            self.holding.check_unheld()
            # Create it 0600 before SQLite does (its -wal and -shm files copy this mode).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = self._connect(create=True)
        try:
            identity = self._hold(conn)
            conn.setbusytimeout(int(self.busy_timeout * 1000))
            self._inspect(conn)  # before anything is written
            self.holding.settle()  # (a queue: its `-lock` stays; a refused file's goes)
            self._bind(identity)
        except BaseException as exc:
            self._close_unused(conn, exc)
            raise
        self.gate.open(os.stat(self.path).st_mode & 0o666)  # as SQLite does for -wal, -shm
        # Before anything writes the header: SQLite applies it to an empty file only.
        conn.execute(f"PRAGMA page_size = {self.page_size or PAGE_SIZE}").fetchall()
        self._pragma(conn, "journal_mode", "wal", "wal")
        kept = int(_scalar(conn, "PRAGMA page_size"))
        if self.page_size not in (None, kept) and self.path not in _TOLD_PAGE_SIZE:
            _TOLD_PAGE_SIZE.add(self.path)  # once per process (and its forked workers)
            log.warning(
                "%s keeps its %d-byte pages: page_size=%d applies to a new file only",
                self.path,
                kept,
                self.page_size,
            )
        sync = {"normal": 1, "full": 2}[self.durability]
        self._pragma(conn, "synchronous", sync, sync)
        self._pragma(conn, "journal_size_limit", JOURNAL_LIMIT, JOURNAL_LIMIT)
        # A claim's subqueries build small temporary tables: in memory, not in a file.
        self._pragma(conn, "temp_store", "memory", 2)
        pages = WAL_CHECKPOINT_BYTES // kept
        self._pragma(conn, "wal_autocheckpoint", pages, pages)
        schema.migrate(conn, self.path, shared=self.shared)
        return conn

    def _connect(self, *, create: bool) -> apsw.Connection:
        """A connection to the path, through the SQLite this file uses (see `shared`)."""
        self._refuse_other_sqlite()
        if self.shared:
            # (The adapter has the methods of apsw's that liteq calls: one type for mypy.)
            adapted: Any = stdlib.Connection(
                self.path, create=create, statementcachesize=STATEMENT_CACHE
            )
            return cast(apsw.Connection, adapted)
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
        return apsw.Connection(self.path, flags=flags, statementcachesize=STATEMENT_CACHE)

    def _refuse_other_sqlite(self) -> None:
        """StoreError if this process has the file open through the other copy of SQLite
        (a store with `shared` and one without, on one file: see stdlib.py)."""
        real = os.path.realpath(self.path)
        for other in list(_FILES):
            if (
                other.shared != self.shared
                and other._session is not None
                and os.path.realpath(other.path) == real
            ):
                raise StoreError(
                    f"{self.path} is open in this process as an application's database "
                    "(shared) and as a queue file of its own: open it one way only "
                    "(two copies of SQLite on one file in one process corrupt it)"
                )

    def _open_to_read(self, path: Path) -> apsw.Connection:
        """A connection only to read: nothing is created, set up, migrated or written. (It
        is opened for writing all the same, when it may be: the last connection to close
        then removes the `-wal` and `-shm` files reading made, as a read-only one cannot.)"""
        if not path.is_file():
            if self._identity is not None:
                raise self._gone("deleted")
            raise StoreError(f"no queue at {self.path}")
        conn = self._connect(create=False)
        try:
            identity = self._hold(conn)
            conn.setbusytimeout(int(self.busy_timeout * 1000))
            version = self._version(conn)
            if version == 0:
                holds = "liteq's tables are not in it yet" if self.shared else "it holds no tables"
                raise StoreError(f"no queue at {self.path} ({holds})")
            if version != schema.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version} and this liteq reads "
                    f"{schema.SCHEMA_VERSION}: a worker of this liteq brings it up to date"
                )
            # Not settled: a reader writes nothing, so it removes a `-lock` it made when it
            # lets go, if no other process holds it ("read-only commands create no file").
            self._bind(identity)
        except BaseException as exc:
            self._close_unused(conn, exc)
            raise
        return conn

    def _hold(self, conn: apsw.Connection) -> tuple[int, int]:
        """Hold the log for the file `conn` opened (see holding.py), before anything is
        read through it; return that file's identity. StoreMoved if the log at the path is
        another file's."""
        identity = self._file_identity()
        if self._identity is not None and identity != self._identity:
            raise self._gone("replaced")
        mode = os.stat(self.path).st_mode & 0o666  # as SQLite does for -wal, -shm
        self.holding.take(identity, mode, self.busy_timeout)
        if not self.in_place(conn) or self._file_identity() != identity:
            self.holding.release()
            raise _Raced(f"{self.path} was replaced, again and again, while being opened")
        return identity

    def _close_unused(self, conn: apsw.Connection, why: BaseException) -> None:
        """Close a connection refused while opening, then let go of its hold."""
        try:
            if isinstance(why, StoreMoved):  # the log may be another file's: copy none of it
                conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            with self.holding.closing():
                conn.close()
        finally:
            self.holding.release()

    def _inspect(self, conn: apsw.Connection) -> None:
        """Refuse a file liteq must not use."""
        if conn.readonly("main"):  # (SQLite opens a file it may not write read-only)
            raise StoreError(
                f"{self.path} is read-only for this process (its permissions, or a read-only "
                "file system): liteq must be able to write the queue file"
            )
        self._version(conn)

    def _version(self, conn: apsw.Connection) -> int:
        """The file's schema version; StoreError if it is no liteq queue."""
        try:
            version, tables = schema.read(conn, shared=self.shared)
        except apsw.Error as exc:
            raise self.translate(exc) from exc
        refusal = schema.refusal(version, tables, shared=self.shared)
        if refusal is not None:
            raise StoreError(f"{self.path} {refusal}")
        return version

    def _file_identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _bind(self, identity: tuple[int, int]) -> None:
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            raise self._gone("replaced")

    def _pragma(self, conn: apsw.Connection, name: str, value: object, expect: object) -> None:
        # One statement per call, read back: a pragma can fail silently (WAL on a busy file).
        got = None
        for attempt in range(50):
            conn.execute(f"PRAGMA {name} = {value}").fetchall()
            got = conn.execute(f"PRAGMA {name}").fetchone()
            if got is not None and got[0] == expect:
                return
            time.sleep(0.02 * (attempt + 1))
        raise StoreError(f"could not set PRAGMA {name}={value} on {self.path} (got {got!r})")

    # -- the path still naming the file ----------------------------------------------------
    def in_place(self, conn: apsw.Connection) -> bool:
        """Whether the path still names the file `conn` has open (one stat, in SQLite)."""
        conn.file_control("main", apsw.SQLITE_FCNTL_HAS_MOVED, self._moved_flag_address)
        return not self._moved_flag.value

    def check_in_place(self, conn: apsw.Connection) -> None:
        """Raise StoreMoved, and give up the connection, if its file left the path."""
        if not self.in_place(conn):
            raise self.abandon(conn)

    def abandon(self, conn: apsw.Connection) -> StoreMoved:
        """Give up a connection whose file left the path; return the error to raise."""
        # While this process holds the log, no process of another file may use it, so all
        # it holds are commits of this one: move them into it (wherever it is now) and
        # empty `<path>-wal`, so that a file put at the path can use the log once every
        # process of this one has let go. Then close without the checkpoint on close,
        # which could delete `<path>-wal` by name.
        closed = False
        with contextlib.suppress(apsw.Error):
            conn.setbusytimeout(100)
            if self.holding.serves_mine():
                conn.execute(queries.EMPTY_WAL).fetchall()
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            conn.close()
            closed = True
        if closed:
            self.holding.release()
        else:  # keep it, and the hold, rather than close it checkpointing
            _INHERITED.append(conn)
        self._session = None
        self.gate.close()
        return self._gone("deleted or replaced")

    def _gone(self, how: str) -> StoreMoved:
        self._moved = (
            f"{self.path} was {how} while liteq had it open: nothing more is written to it "
            "from this process (jobs enqueued meanwhile went into the file that was there); "
            "restore the file, or restart every process that uses the queue"
        )
        return StoreMoved(self._moved)

    # -- errors ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn apsw's errors into liteq's (see translate)."""
        try:
            yield
        except (apsw.Error, Busy) as exc:
            raise self.translate(exc) from exc

    def _left_path(self) -> bool:
        """Whether the path no longer names the file this process opened."""
        try:
            return self._identity is not None and self._file_identity() != self._identity
        except OSError:
            return True

    def stayed_locked(self, detail: str) -> StoreError:
        """The error of a write that waited out the busy timeout."""
        return StoreError(
            f"{self.path} stayed locked by another process for more than "
            f"{self.busy_timeout}s: {detail}"
        )

    def translate(self, exc: apsw.Error | Busy) -> Exception:
        """An apsw error in words a user understands (others pass through unchanged)."""
        if isinstance(exc, apsw.BusyError | Busy):
            return self.stayed_locked(str(exc))
        if isinstance(exc, apsw.FullError):
            return StoreError(f"the disk holding {self.path} is full: {exc}")
        if isinstance(exc, apsw.NotADBError | apsw.CorruptError):
            if self._left_path():  # not damage: the path names another file now
                return self._gone("deleted or replaced")
            if self._identity is None and not _has_sqlite_header(self.path):
                # Never a queue of ours (a mistyped --db, say): a refusal, not damage.
                return StoreError(f"{self.path} is not an SQLite file, so not a liteq queue")
            # Not transient: retrying cannot help, and writing on may spread the damage.
            return StoreCorrupt(
                f"{self.path} is not a usable SQLite database ({exc}): stop every process "
                "that uses it, then restore it from a backup, or save what it holds with "
                f"`sqlite3 {self.path} .recover | sqlite3 recovered.sqlite`; "
                f"`liteq db check --db {self.path}` checks a file"
            )
        if isinstance(exc, apsw.CantOpenError):
            if Path(self.path).is_dir():
                return StoreError(f"{self.path} is a directory, not a queue file")
            return StoreError(f"cannot open {self.path}: {exc}")
        if isinstance(exc, apsw.ReadOnlyError):
            return StoreError(f"{self.path} is read-only: {exc}")
        if isinstance(exc, apsw.IOError):
            return StoreError(f"I/O error on {self.path}: {exc}")
        return exc

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close this process's connection (it reopens if used again)."""
        with self.mutex:
            self._let_go()

    def _let_go(self) -> None:
        """Close the connection, or, if its file is no longer at the path, abandon it."""
        pair = self._session
        if pair is not None and self._pid == os.getpid():
            try:
                self.check_in_place(pair[0])
            except StoreMoved:
                return  # abandoned, not closed
            with self.holding.closing():
                pair[0].close()
        self._session = None
        self.gate.close()
        self.holding.release()  # (after the close, which may checkpoint into our file)

    def close_for_fork(self) -> None:
        """Before fork(), with the mutex held: close the connection, unless a transaction
        is open on it (then the child must not use the file: _after_fork_in_child)."""
        if self._session is None or self._session[0].get_autocommit():
            self._let_go()

    def forked(self) -> None:
        """In the child after fork(): fresh locks; a connection left open is never used."""
        self.mutex = threading.RLock()
        self._session = None
        self.gate.close()  # (the child's copy of the descriptor, should it have one)
        self.holding.forget()


class _Raced(StoreError):
    """The path came to name another file while it was being opened: open what it names."""


def _scalar(conn: apsw.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    if row is None:
        raise StoreError(f"no row from {sql!r}")
    return row[0]


#: How every SQLite database file begins.
_SQLITE_HEADER: Final = b"SQLite format 3\x00"


def _has_sqlite_header(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return True  # (unreadable: say what SQLite said)
