"""The async API's connections to PostgreSQL (`await store.aenqueue(...)`, `store.aget`).

An asyncio connection belongs to the event loop it was opened on (that loop watches its
socket), so a store keeps one per loop that uses it, opened on first use: an application
may run several loops (a test suite does; so does a thread with a loop of its own). The
tasks of one loop take turns on its connection, each for a whole statement or transaction.
Its statements are the blocking store's (queries.sql), and an insert runs `insert_steps`,
as PgTx.insert does; the triggers that NOTIFY idle workers fire for it alike.

`close()` may be called from any thread, and closes each connection in its loop's own
thread, at once or when the task using it is done; a connection of a loop that is closed
is closed on the spot. No connection crosses fork(): a child opens its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any, Final

import psycopg
from psycopg.rows import tuple_row

from liteq.errors import StoreError
from liteq.record import Record
from liteq.stores.postgres.link import alive, connect_failure, connect_options, translate
from liteq.stores.postgres.queries import Queries
from liteq.stores.postgres.transaction import Inserted, InsertSteps, insert_steps

_IDLE: Final = psycopg.pq.TransactionStatus.IDLE
_FAILED: Final = psycopg.pq.TransactionStatus.INERROR

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

_LINKS: weakref.WeakSet[AsyncLink] = weakref.WeakSet()
#: Connections a forked child inherited: never used, and kept referenced so that they are
#: neither closed here (that would end the parent's sessions) nor reported as leaked.
_INHERITED: list[AsyncConn] = []


def _after_fork_in_child() -> None:
    for link in list(_LINKS):
        link.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _finish(conn: AsyncConn) -> None:
    # What AsyncConnection.close() does (psycopg 3), without a loop: callable from any
    # thread once no task uses the connection.
    conn.pgconn.finish()


async def _run(cursor: psycopg.AsyncCursor[tuple[Any, ...]], steps: InsertSteps) -> Inserted:
    """Run an insert's statements on `cursor` in turn; its outcome (see InsertSteps)."""
    try:
        sql, args = next(steps)
        while True:
            await cursor.execute(sql, args)
            sql, args = steps.send(await cursor.fetchone())
    except StopIteration as done:
        outcome: Inserted = done.value
    return outcome


class _Slot:
    """One loop's connection, and the turns its tasks take on it."""

    __slots__ = ("conn", "retired", "turn")

    def __init__(self) -> None:
        self.conn: AsyncConn | None = None
        self.turn = asyncio.Lock()
        self.retired = False

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                _finish(conn)

    def done(self) -> None:
        """A task's turn ends: a connection retired meanwhile is closed now."""
        if self.retired:
            self.drop()

    def retire(self) -> None:
        """Close the connection now, or (a task using it) when that task is done. Call in
        the loop's thread, or with the loop closed or stopped."""
        self.retired = True
        if not self.turn.locked():
            self.drop()


class AsyncLink:
    """This process's async connections to the server for one store: one per event loop."""

    def __init__(self, conninfo: str, setup: str, server: str) -> None:
        self.conninfo = conninfo
        self.setup = setup  # statements run on each new connection
        self.server = server
        self._mutex = threading.Lock()  # (loops in several threads share the table)
        self._slots: dict[asyncio.AbstractEventLoop, _Slot] = {}
        _LINKS.add(self)

    def _slot(self) -> _Slot:
        loop = asyncio.get_running_loop()
        with self._mutex:
            for gone in [other for other in self._slots if other.is_closed()]:
                self._slots.pop(gone).drop()  # a closed loop runs none of its tasks
            slot = self._slots.get(loop)
            if slot is None:
                slot = self._slots[loop] = _Slot()
            return slot

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[AsyncConn]:
        """This loop's connection, the task's alone for the block; a fault comes out as
        StoreError (a broken connection is dropped, and made again next time)."""
        while True:
            slot = self._slot()
            async with slot.turn:
                if slot.retired:  # closed while this task waited for its turn
                    continue
                conn = await self._connection(slot)
                try:
                    yield conn
                except psycopg.Error as exc:
                    if conn.broken or conn.closed or conn.info.transaction_status != _IDLE:
                        slot.drop()
                    raise translate(exc, self.server) or exc from exc
                except BaseException:
                    # (Cancelled, say, mid-statement: the session's state is unknown, and the
                    # server rolls back what a closed one began.)
                    if conn.closed or conn.info.transaction_status != _IDLE:
                        slot.drop()
                    raise
                finally:
                    slot.done()
                return

    async def _connection(self, slot: _Slot) -> AsyncConn:
        conn = slot.conn
        if conn is not None and not alive(conn):  # the server ended it (a restart, say)
            slot.drop()
            conn = None
        if conn is None:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, **connect_options(self.conninfo)
                )
            except psycopg.Error as exc:
                raise connect_failure(exc, self.conninfo) or exc from exc
            slot.conn = conn
            if self.setup:
                try:
                    await conn.execute(self.setup.encode())
                except psycopg.Error as exc:
                    slot.drop()
                    raise translate(exc, self.server) or exc from exc
        return conn

    async def insert(self, q: Queries, record: Record) -> Inserted:
        """Insert a new job (see InsertSteps for the outcome): one statement committed on
        its own, or, for a job with a coalesce id, a transaction that locks its holder."""
        async with self.using() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            if record.coalesce_id is None:
                return await _run(cursor, insert_steps(q, record))
            await cursor.execute("BEGIN")
            try:
                outcome = await _run(cursor, insert_steps(q, record))
            except BaseException:
                if not conn.broken and conn.info.transaction_status != _IDLE:
                    with contextlib.suppress(psycopg.Error):
                        await cursor.execute("ROLLBACK")
                raise
            try:
                await cursor.execute("COMMIT")
            except psycopg.Error as exc:
                conn_ok = not (conn.broken or conn.closed)
                if conn_ok and conn.info.transaction_status != _IDLE:
                    with contextlib.suppress(psycopg.Error):
                        await cursor.execute("ROLLBACK")
                raise translate(exc, self.server, committing=True) or exc from exc
            return outcome

    async def fetchone(self, sql: str, args: Any) -> tuple[Any, ...] | None:
        """The first row of a read."""
        async with self.using() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            await cursor.execute(sql, args)
            return await cursor.fetchone()

    def close(self) -> None:
        """Close every loop's connection (from any thread; a later use opens a new one)."""
        with self._mutex:
            slots, self._slots = self._slots, {}
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, slot in slots.items():
            if loop is here or loop.is_closed() or not loop.is_running():
                slot.retire()
                continue
            try:
                loop.call_soon_threadsafe(slot.retire)
            except RuntimeError:  # (closed meanwhile)
                slot.retire()

    def forked(self) -> None:
        """In a forked child: forget the parent's connections without touching them."""
        self._mutex = threading.Lock()
        slots, self._slots = self._slots, {}
        _INHERITED.extend(slot.conn for slot in slots.values() if slot.conn is not None)


async def insert_joined(
    conn: psycopg.AsyncConnection[Any], q: Queries, record: Record, server: str
) -> Inserted:
    """Insert a new job on an application's async connection, inside its transaction (or,
    with none open on an autocommit connection, in one of its own): the job exists if and
    only if that transaction commits."""
    status = conn.info.transaction_status
    if status == _FAILED:
        raise StoreError("the connection's transaction has failed: roll it back first")
    cursor = conn.cursor(row_factory=tuple_row)
    try:
        if status == _IDLE and conn.autocommit:
            async with conn.transaction():
                return await _run(cursor, insert_steps(q, record))
        return await _run(cursor, insert_steps(q, record))
    except psycopg.Error as exc:
        raise translate(exc, server) or exc from exc
