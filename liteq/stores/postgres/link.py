"""A process's connection to PostgreSQL: opened on first use, and again after a fault or a fork.

No connection is open across fork(): a child sharing its parent's socket would interleave
its messages with the parent's, and closing it in the child would end the parent's session.
So before fork() every link closes its connection (both processes reconnect on first use),
holding its mutex until the fork is done so that no thread reopens it meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Final

import psycopg
import psycopg.conninfo
import psycopg.errors

from liteq.errors import StoreError, StoreUnavailable

log = logging.getLogger("liteq.store")

#: Seconds a connection attempt may take before it is a failure.
CONNECT_TIMEOUT: Final = 10

_LINKS: weakref.WeakSet[Link] = weakref.WeakSet()
_HELD: list[Link] = []


def _before_fork() -> None:
    for link in list(_LINKS):
        link.mutex.acquire()
        _HELD.append(link)
        link.close_quietly()


def _after_fork() -> None:
    while _HELD:
        _HELD.pop().mutex.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def where(conninfo: str) -> str:
    """The server a conninfo names, for messages (never its password)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "PostgreSQL"
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    db = params.get("dbname") or params.get("user") or ""
    return f"PostgreSQL at {host}:{port}/{db}"


def connect(conninfo: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection: StoreUnavailable if the server cannot be reached now,
    StoreError if it refuses for good, ValueError if a setting is wrong (before asking it)."""
    try:
        return psycopg.connect(conninfo, **connect_options(conninfo))
    except psycopg.Error as exc:
        raise connect_failure(exc, conninfo) or exc from exc


def connect_options(conninfo: str) -> dict[str, Any]:
    """How liteq connects (a blocking connection or an async one alike): autocommit, and
    named "liteq" on the server unless the URL or PGAPPNAME names it."""
    return {
        "autocommit": True,
        # (only when neither the URL nor PGAPPNAME names the connection: an application
        # that gives its workers a name of their own can tell them apart on the server)
        "fallback_application_name": "liteq",
        **_timeout_unless_given(conninfo),
    }


def connect_failure(exc: psycopg.Error, conninfo: str) -> Exception | None:
    """What a failed connection attempt raises: ValueError for a setting that is wrong
    (libpq checks them before it asks the server), StoreError for a refusal for good,
    StoreUnavailable for a server that may answer later; None for anything else (raised
    as it is)."""
    if isinstance(exc, psycopg.ProgrammingError):  # (before the server is asked)
        return ValueError(f"bad PostgreSQL URL or connection string: {_first_line(exc)}")
    if not isinstance(exc, psycopg.OperationalError):
        return None
    reason = _reason(exc)
    if _MISCONFIGURED.search(reason):
        return ValueError(f"bad PostgreSQL setting: {reason}")
    message = f"cannot connect to {where(conninfo)}: {reason}"
    if any(words in str(exc) for words in _REFUSALS):
        return StoreError(message)  # trying again would not help
    return StoreUnavailable(message)


def _timeout_unless_given(conninfo: str) -> dict[str, Any]:
    """CONNECT_TIMEOUT, unless the URL or PGCONNECT_TIMEOUT gives one (which libpq then
    checks, as it checks every setting)."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        given = {}  # (connect() says what is wrong with it)
    if "connect_timeout" in given or "PGCONNECT_TIMEOUT" in os.environ:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


#: How libpq words a setting it cannot use: it checks them before it connects (a bad
#: sslmode, a port that is no number), so waiting for the server would never help.
_MISCONFIGURED: Final = re.compile(
    r'invalid "?\w+"? value|invalid integer value|invalid port number'
    r"|could not parse network address|could not match \d+ \w+ \w+ to"
    r"|invalid connection option|when SSL support is not compiled in"
)

#: What psycopg and libpq put before the reason a connection failed.
_PREFIXES: Final = re.compile(
    r"^(?:connection is bad: |connection failed: )?"
    r"(?:connection to server (?:at|on) .*? failed: )?"
)


def _reason(exc: BaseException) -> str:
    return _PREFIXES.sub("", _first_line(exc), count=1)


#: What a server says when it refuses a connection for good (a wrong database, user,
#: password or setting); anything else (no answer, starting up, too many clients) may pass.
_REFUSALS: Final = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "unrecognized configuration parameter",
    "invalid value for parameter",
    "permission denied",
    "invalid connection option",
    "invalid URI",
    "does not support SSL",
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RolledBack(StoreError):
    """The server rolled a transaction back (a deadlock, a serialization failure): nothing
    of it was written, and the same transaction again may well go through."""


def translate(exc: psycopg.Error, server: str, *, committing: bool = False) -> StoreError | None:
    """The StoreError a fault of the server or the connection is, or None for any other
    error (a bug, or a constraint liteq relies on: raised as it is)."""
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return StoreError(f"{server} cancelled a statement: {_first_line(exc)}")
    # SQLSTATE class 40, a deadlock say (psycopg's DeadlockDetected is no subclass of its
    # TransactionRollback): the server rolled the transaction back, so nothing of it holds
    # (but for 40003, a statement whose completion is unknown).
    if (exc.sqlstate or "").startswith("40") and exc.sqlstate != "40003":
        return RolledBack(f"{server} rolled back a transaction: {_first_line(exc)}; try again")
    if isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout):
        # (Its process stopped inside a transaction for longer than the server allows: the
        # server rolled it back and ended the session.)
        return StoreUnavailable(
            f"{server} ended a transaction left open too long, and its connection: nothing "
            "of it was written"
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return _lost(exc, server, committing=committing)
    return None


def _lost(exc: psycopg.Error, server: str, *, committing: bool = False) -> StoreUnavailable:
    """The StoreUnavailable of a connection lost to `exc`."""
    if committing:
        return StoreUnavailable(
            f"the connection to {server} was lost while committing ({_first_line(exc)}): "
            "the change may or may not have been made"
        )
    return StoreUnavailable(f"lost the connection to {server}: {_first_line(exc)}")


def alive(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection is still open: one the server ended (a restart, an idle
    timeout, pg_terminate_backend) has its last words waiting on the socket, which costs
    one poll to see, so that the statement sent next does not fail for it."""
    if conn.closed or conn.broken:
        return False
    try:
        for _ in range(3):  # (its error message, then the end of the stream)
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
            if not readable:
                return conn.pgconn.status == psycopg.pq.ConnStatus.OK
            conn.pgconn.consume_input()
    except (OSError, ValueError, psycopg.Error):
        return False
    return conn.pgconn.status == psycopg.pq.ConnStatus.OK


class Link:
    """This process's link to the server for one store: one connection, opened on first use,
    reopened after a fault, closed around fork(), its users taking turns on `mutex`."""

    def __init__(self, conninfo: str, setup: str = "") -> None:
        self.conninfo = conninfo
        self.setup = setup  # statements run on each new connection
        self.server = where(conninfo)
        self.mutex = threading.RLock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lost = False  # the last connection was lost: say so when it is back
        _LINKS.add(self)

    def connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The open connection (call with the mutex held), connecting if there is none."""
        conn = self._conn
        if conn is not None and not alive(conn):
            self._lost = True
            self.close_quietly()
            log.warning("the connection to %s was closed by the server", self.server)
            conn = None
        if conn is None or conn.closed:
            conn = connect(self.conninfo)
            if self.setup:
                try:
                    conn.execute(self.setup.encode())
                except psycopg.Error as exc:
                    conn.close()
                    raise translate(exc, self.server) or exc from exc
            self._conn = conn
            if self._lost:
                self._lost = False
                log.warning("connected to %s again", self.server)
        return conn

    @contextlib.contextmanager
    def using(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The connection, held for the block; a fault of the server or the connection
        comes out as StoreError (a broken connection is dropped, and made again next time)."""
        with self.mutex:
            conn = self.connection()
            try:
                yield conn
            except psycopg.Error as exc:
                raise self.fault(exc) from exc

    def fault(self, exc: psycopg.Error, *, committing: bool = False) -> BaseException:
        """What to raise for `exc`; drops the connection if it is broken (whatever the
        error: one the server ends a session with is a lost connection to the caller)."""
        conn = self._conn
        told = translate(exc, self.server, committing=committing)
        if conn is not None and (conn.broken or conn.closed):
            self._lost = True
            self.close_quietly()
            if told is None:
                told = _lost(exc, self.server, committing=committing)
        return told or exc

    def close_quietly(self) -> None:
        """Close the connection, whatever state it is in."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close the connection (a later use opens a new one)."""
        with self.mutex:
            self.close_quietly()

    def __del__(self) -> None:  # a store nobody closed: end its session tidily
        self.close_quietly()
