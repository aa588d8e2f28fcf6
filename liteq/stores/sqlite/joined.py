"""Joining an application's transaction on a shared SQLite file (SQLiteStore's `shared`):
its sqlite3 connection (or SQLAlchemy's on one) found, checked and wrapped, and liteq's
writes run inside the application's transaction, so that a job exists if and only if that
transaction commits."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import apsw

from liteq.errors import StoreError
from liteq.stores.contract import Tx
from liteq.stores.sqlite import stdlib
from liteq.stores.sqlite.transaction import SQLiteTx

if TYPE_CHECKING:
    from liteq.stores.sqlite.file import QueueFile


class SQLAlchemyConnection(Protocol):
    """SQLAlchemy's Connection, as far as joining its transaction needs it."""

    @property
    def connection(self) -> Any: ...  # (its pool's proxy of the DB-API connection)


#: What `connection=` takes: Python's sqlite3 connection, or SQLAlchemy's on top of one.
AppConnection = sqlite3.Connection | SQLAlchemyConnection


def _dbapi(connection: object) -> sqlite3.Connection:
    """The sqlite3 connection beneath an application's connection; TypeError if none."""
    if isinstance(connection, sqlite3.Connection):
        return connection
    # SQLAlchemy: Connection.connection is its pool's proxy of the DB-API connection.
    raw = getattr(getattr(connection, "connection", None), "dbapi_connection", None)
    if isinstance(raw, sqlite3.Connection):
        return raw
    raise TypeError(
        f"connection must be a sqlite3 Connection (or SQLAlchemy's on SQLite), not {connection!r}"
    )


@contextlib.contextmanager
def joining(joined: AppConnection, path: str) -> Iterator[stdlib.Connection]:
    """The application's connection to the queue's file `path`, wrapped for liteq's
    statements; TypeError or StoreError for one that is not."""
    connection = _dbapi(joined)
    # liteq's text comes back as str whatever the application reads it as (its
    # row_factory the adapter's cursors leave aside; its text_factory is set here).
    text_factory = connection.text_factory
    try:
        connection.text_factory = str
        _check_same_file(connection, path)
        yield stdlib.Connection(path, raw=connection)
    finally:
        with contextlib.suppress(sqlite3.Error):
            connection.text_factory = text_factory


def _check_same_file(connection: sqlite3.Connection, path: str) -> None:
    theirs = ""
    try:
        cursor = connection.cursor()
        cursor.row_factory = None
        rows = cursor.execute("PRAGMA database_list").fetchall()
        theirs = next((str(r[2]) for r in rows if r[1] == "main"), "")
        same = bool(theirs) and os.path.samefile(theirs, path)
    except sqlite3.ProgrammingError as exc:  # closed, or another thread's
        raise StoreError(f"connection= cannot be used: {exc}") from exc
    except (sqlite3.Error, OSError):
        same = False
    if not same:
        raise StoreError(
            f"connection= must be a connection to the queue's file {path}, "
            f"not to {theirs or 'a database in memory'}"
        )


@contextlib.contextmanager
def in_application_transaction(
    conn: stdlib.Connection, file: QueueFile, now: float
) -> Iterator[Tx]:
    """liteq's writes in the application's transaction on `conn`."""
    # Inside the application's transaction a savepoint, so that a refusal rolls back the
    # job only; outside one, a transaction of the job's own, unless sqlite3 would begin one
    # before a write (its legacy mode): then that one, for the application to commit.
    # (Immediate: a deferred one that reads first could not then wait to write.)
    own = conn.get_autocommit()
    raw = conn.raw
    implicit = getattr(raw, "autocommit", -1) == -1 and raw.isolation_level is not None
    began = own and implicit
    if began:
        exclusive = str(raw.isolation_level).upper() == "EXCLUSIVE"
        with file.errors():
            conn.execute("BEGIN EXCLUSIVE" if exclusive else "BEGIN IMMEDIATE")
        own = False
    begin, commit, undo = (
        ("BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",))
        if own
        else (
            "SAVEPOINT liteq_enqueue",
            "RELEASE liteq_enqueue",
            ("ROLLBACK TO liteq_enqueue", "RELEASE liteq_enqueue"),
        )
    )
    with file.errors():
        conn.execute(begin)
    try:
        tx = SQLiteTx(cast(apsw.Connection, conn), cast(apsw.Cursor, conn.cursor()), now)
        yield tx
    except BaseException as exc:
        with contextlib.suppress(apsw.Error):
            for statement in ("ROLLBACK",) if began else undo:  # (all it holds: ours)
                conn.execute(statement)
        if isinstance(exc, apsw.Error):
            raise file.translate(exc) from exc
        raise
    with file.errors():
        conn.execute(commit)
