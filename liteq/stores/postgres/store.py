"""PostgresStore: the same queue in a PostgreSQL database, with workers on many hosts."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Unpack

import psycopg
from psycopg.rows import tuple_row

from liteq.errors import StoreError
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.options import EnqueueOptions
from liteq.record import WAITING, Record
from liteq.status import Status
from liteq.stores.base import BaseStore, check_job_id
from liteq.stores.contract import (
    WAITS_FOR_ITS_TYPE,
    CountDrift,
    JobQuery,
    QueueCount,
    ScheduleInfo,
    Tx,
)
from liteq.stores.events import Event, StatusHook
from liteq.stores.postgres import aio
from liteq.stores.postgres import schema as pg_schema
from liteq.stores.postgres.aio import AsyncLink
from liteq.stores.postgres.link import Link, RolledBack, translate
from liteq.stores.postgres.listener import Listener
from liteq.stores.postgres.queries import SCHEMA_NAME, queries
from liteq.stores.postgres.registry import PgRegistry
from liteq.stores.postgres.transaction import (
    PgTx,
    Transaction,
    alike_args,
    bigints,
    claimed_records,
    new_values,
    queue_names,
    record_of,
)
from liteq.stores.wakeup import Waker

#: The SQLSTATE the function complete_and_claim raises for a completion no longer its
#: run's (migrations/09_complete_and_claim.sql): it changed nothing.
NOT_ITS_RUN = "LQ001"
#: How many times an `after=` enqueue runs its transaction while the server rolls it back.
ROLLED_BACK_TRIES = 5

_IDLE = psycopg.pq.TransactionStatus.IDLE
_FAILED = psycopg.pq.TransactionStatus.INERROR


class PostgresStore(BaseStore):
    """A queue in a PostgreSQL database: many processes on many hosts.

    `dsn`: a `postgresql://` URL or a libpq connection string. liteq keeps its tables in
    the schema `schema` (created, with its tables, on first open; a schema holding other
    tables, or made by a newer liteq, is refused). Workers claim side by side with
    `FOR UPDATE SKIP LOCKED`, and wake within milliseconds of an enqueue by LISTEN/NOTIFY.
    `readonly=True` opens an existing queue to read it only: nothing is created.
    Each process opens its own connections (one for its work, one to listen while a
    worker waits); hosts' clocks must agree to well within a lease (NTP does).

        store = liteq.PostgresStore("postgresql://app@db.internal/app")
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "liteq",
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
    ) -> None:
        if not isinstance(schema, str) or not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema must be a plain name (letters, digits, _; at most 57), not {schema!r}"
            )
        self.dsn = dsn
        self.schema = schema
        self.readonly = readonly
        self._q = queries(schema)
        self._link = Link(dsn, self._q.SESSION_SETTINGS)
        self._alink = AsyncLink(dsn, self._q.SESSION_SETTINGS, self._link.server)
        waker = Waker()
        super().__init__(
            registry=PgRegistry(self._link, self._q, clock),
            clock=clock,
            on_status_change=on_status_change,
            waker=waker,
        )
        self._listener = Listener(dsn, self._q.channel, waker)
        self._local = threading.local()  # the application's connection an enqueue joins
        with self._link.using() as conn:
            if readonly:
                pg_schema.check_readable(conn, schema, self._link.server)
            else:
                pg_schema.migrate(conn, schema)

    # -- joining an application's transaction ------------------------------------
    def enqueue(
        self,
        job: Job,
        *,
        connection: psycopg.Connection[Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> ManagedJob:
        """Enqueue a job (see BaseStore.enqueue). With `connection`, an application's
        psycopg connection, inside its transaction: the job exists if and only if that
        transaction commits (hooks run at once, before it does).

            with app_db.transaction():
                app_db.execute("INSERT INTO orders …")
                store.enqueue(SendReceipt(order_id), connection=app_db)
        """
        if connection is None:
            return super().enqueue(job, **options)
        with self._joining(connection):
            return super().enqueue(job, **options)

    def enqueue_many(
        self,
        jobs: Iterable[Job],
        *,
        connection: psycopg.Connection[Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> list[ManagedJob]:
        """Enqueue jobs in one transaction (see BaseStore.enqueue_many); with `connection`,
        in the application's, as enqueue() does."""
        if connection is None:
            return super().enqueue_many(jobs, **options)
        with self._joining(connection):
            return super().enqueue_many(jobs, **options)

    def _enqueue_after(
        self, record: Record, job: Job, events: list[Event], after: object
    ) -> ManagedJob:
        # Its transaction locks the parents in id order, as liteq's every write of several
        # rows does (PgTx.fenced_write_many); a writer that takes them in another order
        # (the application's, or a plan that reads a small table in its own order) can
        # still deadlock with it, and the server then rolls one back. That one is tried
        # again here (a worker tries again by itself), unless it is the application's
        # transaction, the application's to retry.
        if getattr(self._local, "joined", None) is None:
            for attempt in range(1, ROLLED_BACK_TRIES):
                try:
                    return super()._enqueue_after(record, job, events, after)
                except RolledBack:  # (nothing was written: the insert leaves out the id)
                    time.sleep(random.uniform(0.0, 0.01 * attempt))  # noqa: S311 - not crypto
        return super()._enqueue_after(record, job, events, after)

    async def aenqueue(
        self,
        job: Job,
        *,
        connection: psycopg.AsyncConnection[Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> ManagedJob:
        """Enqueue a job from async code, on this event loop's own async connection (see
        BaseStore.aenqueue: the same options, errors and coalescing; idle workers are woken
        as for enqueue). With `connection`, an application's psycopg AsyncConnection,
        inside its transaction, as enqueue() joins a blocking one.

            async with app_db.transaction():
                await app_db.execute("INSERT INTO orders …")
                await store.aenqueue(SendReceipt(order_id), connection=app_db)
        """
        if connection is not None and not isinstance(connection, psycopg.AsyncConnection):
            raise TypeError(
                f"connection must be a psycopg AsyncConnection, not {connection!r} "
                "(store.enqueue joins a blocking one)"
            )
        if "after" in options:
            if connection is not None:
                raise TypeError("after= cannot join an application's async connection")
            return await self._offload.call(lambda: self.enqueue(job, **options))
        record, events = self._new_record(job, options)
        if connection is None:
            outcome = await self._alink.insert(self._q, record)
        else:
            outcome = await aio.insert_joined(connection, self._q, record, self._link.server)
        if isinstance(outcome, int):
            record.id = outcome
            return self._enqueued(record, job, events)
        if outcome is None:
            raise StoreError(f"job {record.job_type} was not inserted")
        return self._managed(record_of(outcome))  # the job holding its coalesce id

    def get(self, job_id: int, *, connection: psycopg.Connection[Any] | None = None) -> ManagedJob:
        """The job with this id (see BaseStore.get); with `connection`, read on the
        application's psycopg connection, in its transaction: a job it enqueued and has
        not committed yet is found there, and liteq opens no connection of its own."""
        if connection is None:
            return super().get(job_id)
        with self._joining(connection):
            return super().get(job_id)

    async def aget(self, job_id: int) -> ManagedJob:
        """`get` from async code, on this event loop's own async connection."""
        row = await self._alink.fetchone(self._q.GET, (check_job_id(job_id),))
        return self._found(job_id, None if row is None else record_of(row))

    @contextlib.contextmanager
    def _joining(self, connection: psycopg.Connection[Any]) -> Iterator[None]:
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"connection must be a psycopg Connection, not {connection!r}")
        self._local.joined = connection
        try:
            yield
        finally:
            self._local.joined = None

    @contextlib.contextmanager
    def _in_application_transaction(self, conn: psycopg.Connection[Any]) -> Iterator[Tx]:
        status = conn.info.transaction_status
        if status == _FAILED:
            raise StoreError("the connection's transaction has failed: roll it back first")
        cursor = conn.cursor(row_factory=tuple_row)
        try:
            if status == _IDLE and conn.autocommit:  # no transaction to join: one of its own
                with conn.transaction():
                    yield PgTx(cursor, self._q, self.clock())
            else:  # inside the application's: it commits, or rolls back, the job with it
                yield PgTx(cursor, self._q, self.clock())
        except psycopg.Error as exc:
            raise translate(exc, self._link.server) or exc from exc

    # -- primitives ----------------------------------------------------------
    def _transaction(self, prompt: bool = False) -> contextlib.AbstractContextManager[Tx]:
        joined = getattr(self._local, "joined", None)
        if joined is not None:
            return self._in_application_transaction(joined)
        return Transaction(self._link, self._q, self.clock)

    def _complete_and_claim_alone(
        self,
        done: Sequence[Record],
        owner: str,
        queues: Sequence[str] | None,
        lease: float,
        limit: int,
    ) -> list[Record] | None:
        names = queue_names(queues)
        owners = {record.owner for record in done}
        if getattr(self._local, "joined", None) is not None or names == [] or len(owners) > 1:
            return None  # (the application's transaction; no queue; runs of several owners)
        now, mono = self.clock(), time.monotonic()
        args = (
            bigints([r.id for r in done]),
            bigints([r.attempts for r in done]),
            owners.pop() if owners else owner,
            WAITING,
            names,
            owner,
            now,
            mono,
            lease,
            limit,
            limit > 1,  # (a claim of several holds its jobs: their max_runtime counts later)
        )
        # Committed on its own: a fault in the reply leaves its outcome unknown.
        with self._link.mutex:
            conn = self._link.connection()
            try:
                rows = conn.execute(self._q.COMPLETE_AND_CLAIM, args, binary=True).fetchall()
            except psycopg.Error as exc:
                if exc.sqlstate == NOT_ITS_RUN:
                    return None
                raise self._link.fault(exc, committing=True) from exc
        return claimed_records(rows)

    def _insert_one(self, record: Record) -> int:
        if getattr(self._local, "joined", None) is not None:
            return super()._insert_one(record)
        with self._link.using() as conn:  # one statement, committed on its own
            row = conn.execute(self._q.INSERT, new_values(record)).fetchone()
        if row is None:
            raise StoreError(f"job {record.job_type} was not inserted")
        return int(row[0])

    def _insert_alike_alone(self, records: Sequence[Record]) -> list[int] | None:
        if getattr(self._local, "joined", None) is not None:
            return None  # (in the application's transaction)
        # One round trip, where BEGIN, the insert and COMMIT would take three.
        with self._link.using() as conn:
            rows = conn.execute(self._q.INSERT_ALIKE, alike_args(records)).fetchall()
        if len(rows) != len(records):
            raise StoreError(f"{len(rows)} of {len(records)} jobs were inserted")
        return sorted(int(row[0]) for row in rows)

    def _rows(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        joined: psycopg.Connection[Any] | None = getattr(self._local, "joined", None)
        if joined is not None:  # (a read in the application's transaction: get)
            try:
                with joined.cursor(row_factory=tuple_row) as cursor:
                    return cursor.execute(sql, args).fetchall()
            except psycopg.Error as exc:
                raise translate(exc, self._link.server) or exc from exc
        with self._link.using() as conn:
            return conn.execute(sql, args).fetchall()

    def _value(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> Any:
        rows = self._rows(sql, args)
        return rows[0][0] if rows else None

    def _read(self, job_id: int) -> Record | None:
        rows = self._rows(self._q.GET, (job_id,))
        return record_of(rows[0]) if rows else None

    def _read_coalesce(self, coalesce_id: str) -> Record | None:
        rows = self._rows(self._q.COALESCE_HOLDER, (coalesce_id,))
        return record_of(rows[0]) if rows else None

    def _count(self, queue: str | None, status: Status | None) -> int:
        sql, args = self._q.count(queue, None if status is None else status.value)
        return int(self._value(sql, args))

    def _search(self, query: JobQuery) -> list[Record]:
        sql, args = self._q.search(query)
        return [record_of(row) for row in self._rows(sql, args)]

    def _summary(self, now: float) -> list[QueueCount]:
        with self._link.using() as conn, conn.transaction():
            conn.execute(self._q.WITHOUT_JIT)
            rows = conn.execute(
                self._q.SUMMARY, {"now": now, "waits": WAITS_FOR_ITS_TYPE}
            ).fetchall()
        return [  # by queue, then status (str order is that of COLLATE "C": code points)
            QueueCount(queue, Status(status), n, oldest, due, unknown)
            for queue, status, n, oldest, due, unknown in sorted(rows, key=lambda r: r[:2])
        ]

    def _check_counts(self, repair: bool) -> list[CountDrift]:
        if not repair:
            return sorted(CountDrift(*row) for row in self._rows(self._q.COUNT_DRIFT))
        with self._link.using() as conn, conn.transaction():
            conn.execute(self._q.LOCK_JOBS_FOR_RECOUNT)  # writers wait until it commits
            conn.execute(self._q.FOLD_COUNTS)
            rows = conn.execute(self._q.COUNT_DRIFT).fetchall()
            if rows:
                conn.execute(self._q.CLEAR_COUNTS)
                conn.execute(self._q.RECOUNT)
        return sorted(CountDrift(*row) for row in rows)

    def _purge(self, status: Status, queue: str | None, before: float | None, limit: int) -> int:
        sql, args = self._q.purge(status.value, queue, before, limit)
        with self._link.using() as conn:
            return conn.execute(sql, args).rowcount

    def _dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        rows = self._rows(self._q.DEPENDENCIES, (job_id,))
        return [(int(after_id), bool(done)) for after_id, done in rows]

    def _expire_results(self, now: float, limit: int) -> int:
        with self._transaction() as tx:
            assert isinstance(tx, PgTx)  # noqa: S101 - this store's own
            purged = tx.count(self._q.EXPIRED_GONE, (now, limit))
            purged += tx.count(self._q.EXPIRED_KEPT, (now, limit))
            tx.execute(self._q.ORPHAN_DEPENDENCIES, (limit,))
        return purged

    def _result_mark(self) -> object:
        self._listener.ensure_running()  # (its 'done' notifications move the mark)
        return super()._result_mark()

    async def _aresult_mark(self) -> object:
        if not self._listener.running():
            await self._offload.call(self._listener.ensure_running)
        return self._waker.mark()

    async def _aread(self, job_id: int) -> Record | None:
        row = await self._alink.fetchone(self._q.GET, (job_id,))
        return None if row is None else record_of(row)

    def _read_active(self) -> list[Record]:
        return [record_of(row) for row in self._rows(self._q.ACTIVE)]

    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        # Per queue and priority, a seek in the claim index: never a scan of every queued
        # job (a million delayed ones, say).
        if queues is None:
            names = [row[0] for row in self._rows(self._q.QUEUED_QUEUES)]
        else:
            names = list(dict.fromkeys(queues))
        paused = self._paused()
        dues = [self._value(self._q.FIRST_DUE, {"queue": n}) for n in names if n not in paused]
        found = [float(d) for d in dues if d is not None]
        return min(found) if found else None

    def _schedules(self) -> list[ScheduleInfo]:
        return [ScheduleInfo(*row) for row in self._rows(self._q.SCHEDULES)]

    def _set_paused(self, queue: str, paused: bool) -> None:
        with self._transaction(prompt=True) as tx:
            assert isinstance(tx, PgTx)  # noqa: S101 - this store's own
            tx.execute(self._q.SET_PAUSED, (queue, paused))
            if not paused:  # its jobs may be claimed again: wake the idle workers
                tx.execute(self._q.NOTIFY, (self._q.channel,))

    def _paused(self) -> set[str]:
        return {row[0] for row in self._rows(self._q.PAUSED)}

    # -- waking idle workers -------------------------------------------------
    def wait_for_jobs(self, queues: Sequence[str] | None, timeout: float) -> bool:
        """Block up to `timeout` seconds; True early once a job may have been queued (a
        notification from any host, or an enqueue in this process)."""
        self._listener.ensure_running()
        return super().wait_for_jobs(queues, timeout)

    def close(self) -> None:
        """Close this process's connections (a later use opens them again), the async
        API's too: each in its event loop's thread, at once or when its task is done."""
        super().close()
        self._alink.close()
        self._listener.stop()
        self._link.close()

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r}, {self._link.server})"
