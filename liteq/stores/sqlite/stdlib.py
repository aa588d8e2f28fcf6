"""The part of apsw's Connection that liteq uses, over Python's own sqlite3 module.

A queue kept in an application's SQLite database (SQLiteStore's `shared`) is opened by the
application's processes with Python's sqlite3. Two copies of SQLite in one process must
never open the same file: each keeps the file's locks as if it were alone, POSIX locks do
not conflict within a process, and one copy resets the WAL under the other's readers
(sqlite.org/howtocorrupt.html, 2.2.1). So on such a file liteq uses the application's copy
of SQLite through this adapter, and its errors are apsw's, so the rest of liteq is the same.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast
from urllib.parse import quote

import apsw

#: apsw's codes for what this adapter emulates (file.py asks for them by these names).
HAS_MOVED: Final = apsw.SQLITE_FCNTL_HAS_MOVED
NO_CKPT_ON_CLOSE: Final = apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE

#: This process's open connections, for file.py's fork check (apsw.connections' twin).
_OPEN: weakref.WeakSet[Connection] = weakref.WeakSet()

#: Connections that could not close without their checkpoint on close (Python before
#: 3.12 cannot turn it off): kept open, and so referenced, for the life of the process.
_KEPT: list[sqlite3.Connection] = []


#: The oldest SQLite liteq's statements run on (FULL JOIN, 3.39; RETURNING and
#: MATERIALIZED, 3.35): a shared file is read through Python's sqlite3, whatever it links.
OLDEST: Final = (3, 39, 0)


def too_old(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> str | None:
    """Why Python's sqlite3 cannot keep a shared queue (its SQLite is older than OLDEST)."""
    if version >= OLDEST:
        return None
    have, need = (".".join(map(str, v)) for v in (version, OLDEST))
    return (
        f"a queue in an application's database needs SQLite {need} or newer in Python's "
        f"sqlite3, which has {have}: use a queue file of its own (shared=False), or a Python "
        "built with a newer SQLite"
    )


def connections() -> list[Connection]:
    """This process's open connections of this adapter."""
    return [conn for conn in list(_OPEN) if conn.is_open]


def _apsw_error(exc: sqlite3.Error) -> apsw.Error:
    """sqlite3's error as the apsw exception of the same SQLite result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        error: apsw.Error = apsw.SQLError(str(exc))
    else:
        error = cast(apsw.Error, apsw.exception_for(code))
        error.args = (f"{type(error).__name__}: {exc}",)
    return error


class Cursor:
    """A cursor: execute, executemany, fetchone, fetchall and iteration, as apsw's."""

    __slots__ = ("_conn", "_cursor")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cursor = conn.raw.cursor()
        self._cursor.row_factory = None  # (an application's connection may have its own)

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        try:
            self._cursor.execute(sql, args)
        except sqlite3.ProgrammingError as exc:
            if "one statement at a time" not in str(exc):
                raise _apsw_error(exc) from exc
            if args:
                raise apsw.SQLError("bindings for a script of several statements") from exc
            self._script(sql)
        except sqlite3.Error as exc:
            raise _apsw_error(exc) from exc
        self._conn.last = self._cursor
        return self

    def _script(self, sql: str) -> None:
        """Run several statements one by one (apsw runs them as its cursor advances;
        sqlite3's executescript would commit an open transaction first)."""
        for statement in split(sql):
            try:
                self._cursor.execute(statement)
                self._cursor.fetchall()
            except sqlite3.Error as exc:
                raise _apsw_error(exc) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Cursor:
        try:
            self._cursor.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _apsw_error(exc) from exc
        self._conn.last = self._cursor
        return self

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except sqlite3.Error as exc:
            raise _apsw_error(exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return self._cursor.fetchall()
        except sqlite3.Error as exc:
            raise _apsw_error(exc) from exc

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._cursor)
        except sqlite3.Error as exc:
            raise _apsw_error(exc) from exc


def split(script: str) -> Iterator[str]:
    """The statements of a script, each complete (a trigger's body stays whole)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        yield statement


class Connection:
    """apsw.Connection's methods that liteq calls, on a sqlite3 connection. With `raw`,
    over an application's connection (not closed here); else opening `path`."""

    def __init__(
        self,
        path: str,
        *,
        create: bool = True,
        statementcachesize: int = 100,
        raw: sqlite3.Connection | None = None,
    ) -> None:
        self.filename = os.path.abspath(path)
        self._owned = raw is None
        self._readonly = False
        self._identity: tuple[int, int] | None = None
        if raw is None:
            uri = f"file:{quote(self.filename)}?mode={'rwc' if create else 'rw'}"
            try:
                raw = sqlite3.connect(
                    uri,
                    uri=True,
                    isolation_level=None,  # transactions are liteq's: BEGIN IMMEDIATE
                    check_same_thread=False,  # (QueueFile's mutex makes threads take turns)
                    cached_statements=statementcachesize,
                    timeout=0,  # (until setbusytimeout: apsw's default)
                )
            except sqlite3.Error as exc:
                raise _apsw_error(exc) from exc
            # The file this connection has open: a path that later names another is
            # "moved" (apsw asks SQLite, which compares the same two numbers).
            st = os.stat(self.filename)
            self._identity = (st.st_dev, st.st_ino)
            # (SQLite opens a file it may not write read-only; the same test as its own.)
            self._readonly = not os.access(self.filename, os.W_OK)
        self.raw = raw
        self.last: sqlite3.Cursor | None = None  # the cursor of the latest statement
        self.is_open = True
        _OPEN.add(self)

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        return Cursor(self).execute(sql, args)

    def __enter__(self) -> Connection:
        """A savepoint, released on leaving (rolled back on an error), as apsw's."""
        self.execute("SAVEPOINT liteq_read")
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.execute("ROLLBACK TO liteq_read")
        self.execute("RELEASE liteq_read")

    def cursor(self) -> Cursor:
        return Cursor(self)

    def changes(self) -> int:
        """Rows the latest INSERT, UPDATE or DELETE changed."""
        last = self.last
        return 0 if last is None or last.rowcount < 0 else last.rowcount

    def last_insert_rowid(self) -> int:
        last = self.last
        return 0 if last is None or last.lastrowid is None else last.lastrowid

    def get_autocommit(self) -> bool:
        return not self.raw.in_transaction

    def setbusytimeout(self, milliseconds: int) -> None:
        self.execute(f"PRAGMA busy_timeout = {int(milliseconds)}").fetchall()

    def set_progress_handler(self, handler: Callable[[], Any] | None, steps: int = 0) -> None:
        self.raw.set_progress_handler(handler, steps)

    def readonly(self, name: str) -> bool:
        return self._readonly

    def config(self, op: int, value: int) -> int:
        """Only NO_CKPT_ON_CLOSE: on Python 3.12+ set; before, close() keeps the connection
        open instead (closing would checkpoint)."""
        if op != NO_CKPT_ON_CLOSE:
            raise apsw.MisuseError(f"config({op}) is not emulated over sqlite3")
        setconfig = getattr(self.raw, "setconfig", None)
        if setconfig is None:
            self._no_close = bool(value)
        else:
            setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, bool(value))  # type: ignore[attr-defined]
        return value

    _no_close = False

    def file_control(self, name: str, op: int, address: int) -> bool:
        """Only HAS_MOVED: write at `address` whether the path names another file now."""
        if op != HAS_MOVED:
            raise apsw.MisuseError(f"file_control({op}) is not emulated over sqlite3")
        try:
            st = os.stat(self.filename)
            moved = (st.st_dev, st.st_ino) != self._identity
        except OSError:
            moved = True
        ctypes.c_int.from_address(address).value = int(moved)
        return True

    def close(self) -> None:
        if not self.is_open:
            return
        self.is_open = False
        if not self._owned:
            return
        if self._no_close:
            _KEPT.append(self.raw)
            return
        try:
            self.raw.close()
        except sqlite3.Error as exc:
            raise _apsw_error(exc) from exc
