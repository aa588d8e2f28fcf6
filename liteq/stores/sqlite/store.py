"""SQLiteStore: the queue is one SQLite file shared by every process on the host."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, Unpack, cast

import apsw

from liteq.errors import StoreError
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.options import EnqueueOptions
from liteq.record import Record
from liteq.status import Status
from liteq.stores.base import BaseStore
from liteq.stores.contract import (
    WAITS_FOR_ITS_TYPE,
    CountDrift,
    FileInfo,
    JobQuery,
    QueueCount,
    ScheduleInfo,
    Tx,
)
from liteq.stores.events import StatusHook
from liteq.stores.sqlite import queries, stdlib
from liteq.stores.sqlite.file import JOURNAL_LIMIT, PAGE_SIZES, QueueFile
from liteq.stores.sqlite.gate import PATIENT, PROMPT, Busy
from liteq.stores.sqlite.joined import AppConnection, in_application_transaction, joining
from liteq.stores.sqlite.registry import SQLiteRegistry
from liteq.stores.sqlite.transaction import (
    SQLiteTx,
    Transaction,
    fold_counts,
    fold_due,
    new_values,
    record_of,
)
from liteq.stores.sqlite.walwatch import WalWatch
from liteq.stores.wakeup import Waker

#: How often an idle worker polls for commits of other processes where inotify cannot tell
#: it of them (walwatch.py): quickly for two seconds after activity, then more slowly
#: (docs/performance.md: pick-up latency and idle cost).
POLL, IDLE_POLL = 0.01, 0.05


class SQLiteStore(BaseStore):
    """The default store: one SQLite file, many processes on one host.

    Opens (creating with mode 0600 if needed) and migrates the file; refuses, leaving it
    as it was, a file that is not a liteq queue. WAL journal; `durability="normal"`
    (synchronous=NORMAL: survives a crash of any process, may lose the last commits on
    power loss) or `"full"` (survives power loss, slower). `page_size` is the page size in
    bytes of a file liteq creates (1024 unless given; 4096 suits jobs whose states are
    10 KB or more); a file that exists keeps its own. `wal_warning`: check_health warns
    once `<path>-wal` passes this many bytes. `readonly=True` opens an existing queue to
    read it only (`liteq status`, say): nothing is created, migrated or written. Each
    process opens its own connection.

    Beside the file, `<path>-lock` lines up liteq's writers (see gate) and says which file
    the log beside the path serves (see holding).

    `shared=True`: the file is also an application's database, opened by the application
    with Python's sqlite3 (Django, SQLAlchemy): liteq's tables (all `liteq_*`) sit beside
    the application's, liteq uses the application's copy of SQLite (stdlib.py says why),
    and `enqueue(job, connection=app_conn)` joins the application's transaction.

        store = liteq.SQLiteStore("jobs.sqlite")
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["normal", "full"] = "normal",
        page_size: int | None = None,
        busy_timeout: float = 10.0,
        wal_warning: int = 64 << 20,
        readonly: bool = False,
        shared: bool = False,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        if page_size is not None and (type(page_size) is not int or page_size not in PAGE_SIZES):
            raise ValueError(
                f"page_size must be a power of two from 512 to 65536 (bytes), not {page_size!r}"
            )
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError(
                f"SQLiteStore needs a file path, not {self.path!r}; "
                "use liteq.MemoryStore() for a queue in memory"
            )
        if shared and (why := stdlib.too_old()) is not None:
            raise StoreError(f"{self.path}: {why}")
        self.durability = durability
        self.page_size = page_size
        self.busy_timeout = busy_timeout
        self._wal_warn_at = wal_warning  # see check_health
        self.readonly = readonly
        self.shared = shared
        self._local = threading.local()  # the application's connection an enqueue joins
        self.file = QueueFile(
            self.path,
            durability=durability,
            page_size=page_size,
            busy_timeout=busy_timeout,
            readonly=readonly,
            shared=shared,
        )
        super().__init__(
            registry=SQLiteRegistry(self.file, clock),
            clock=clock,
            on_status_change=on_status_change,
            waker=Waker(
                self._data_version, poll=POLL, idle_poll=IDLE_POLL, watch=WalWatch(self.path)
            ),
        )
        self._db()

    def _db(self) -> apsw.Connection:
        """This process's connection (tests and tools look through it)."""
        with self.file.mutex:
            return self.file.session()[0]

    # -- joining an application's transaction (shared) ------------------------------
    def enqueue(
        self,
        job: Job,
        *,
        connection: AppConnection | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> ManagedJob:
        """Enqueue a job (see BaseStore.enqueue). With `connection`, the application's
        sqlite3 connection to this file (`shared=True`), or its SQLAlchemy Connection on
        one, inside its transaction: the job
        exists if and only if that transaction commits (hooks run at once, before it does).
        Outside one, the job is committed at once.

            with app_db:  # sqlite3's transaction
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
        connection: AppConnection | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> list[ManagedJob]:
        """Enqueue jobs in one transaction (see BaseStore.enqueue_many); with `connection`,
        in the application's, as enqueue() does."""
        if connection is None:
            return super().enqueue_many(jobs, **options)
        with self._joining(connection):
            return super().enqueue_many(jobs, **options)

    def get(self, job_id: int, *, connection: AppConnection | None = None) -> ManagedJob:
        """The job with this id (see BaseStore.get); with `connection`, read on the
        application's sqlite3 connection, in its transaction: a job it enqueued and has not
        committed yet is found there."""
        if connection is None:
            return super().get(job_id)
        with self._joining(connection):
            return super().get(job_id)

    @contextlib.contextmanager
    def _joining(self, joined: AppConnection) -> Iterator[None]:
        if not self.shared:
            raise StoreError(
                f"connection= joins an application's transaction on its own database: open "
                f"it as SQLiteStore({self.path!r}, shared=True) (a URL: ?shared=1)"
            )
        with joining(joined, self.path) as conn:
            self._local.joined = conn
            try:
                yield
            finally:
                self._local.joined = None

    # -- primitives ----------------------------------------------------------
    def _transaction(self, prompt: bool = False) -> contextlib.AbstractContextManager[Tx]:
        joined: stdlib.Connection | None = getattr(self._local, "joined", None)
        if joined is not None:
            return in_application_transaction(joined, self.file, self.clock())
        return Transaction(self.file, self.clock, PROMPT if prompt else PATIENT)

    def _insert_one(self, record: Record) -> int:
        if getattr(self._local, "joined", None) is not None:
            return super()._insert_one(record)
        # One INSERT in autocommit mode: SQLite takes the write lock before the statement
        # reads anything (its program opens with a write Transaction opcode), so, like
        # BEGIN IMMEDIATE, it waits for the lock and never meets the read-then-write BUSY.
        file = self.file
        with file.mutex:
            conn, cursor = file.session()
            if not conn.get_autocommit():  # a transaction was left open: BEGIN will say so
                return super()._insert_one(record)
            gated = False
            try:
                gated = file.gate.enter(PROMPT, file.busy_timeout)
                cursor.execute(queries.INSERT, new_values(record))
                job_id: int = conn.last_insert_rowid()
                if not file.in_place(conn):  # committed, but to a file no longer in use
                    raise file.abandon(conn)
            except (apsw.Error, Busy) as exc:
                raise file.translate(exc) from exc
            finally:
                if gated:
                    file.gate.leave()
        if fold_due(job_id, 1):  # (a transaction of its own: the insert has committed)
            with self._transaction():
                fold_counts(self.file.session()[1])
        return job_id

    def _read(self, job_id: int) -> Record | None:
        joined: Any = getattr(self._local, "joined", None)
        if joined is not None:
            with self.file.errors():
                return SQLiteTx(joined, joined.cursor(), self.clock()).get(job_id)
        with self.file.reading() as conn:  # the lookup a transaction makes, outside one
            return SQLiteTx(conn, conn.cursor(), self.clock()).get(job_id)

    def _read_coalesce(self, coalesce_id: str) -> Record | None:
        joined: Any = getattr(self._local, "joined", None)
        if joined is not None:
            with self.file.errors():
                return SQLiteTx(joined, joined.cursor(), self.clock()).coalesce_holder(coalesce_id)
        with self.file.reading() as conn:
            return SQLiteTx(conn, conn.cursor(), self.clock()).coalesce_holder(coalesce_id)

    def _count(self, queue: str | None, status: Status | None) -> int:
        sql, args = queries.count(queue, None if status is None else status.value)
        with self.file.reading() as conn:
            return int(_scalar(conn, sql, args))

    def _search(self, query: JobQuery) -> list[Record]:
        sql, args = queries.search(query)
        with self.file.reading() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [record_of(r) for r in rows]

    def _summary(self, now: float) -> list[QueueCount]:
        found = []
        with self.file.reading() as conn, conn:  # one snapshot (a read transaction)
            rows: list[tuple[Any, ...]] = conn.execute(queries.SUMMARY).fetchall()
            for queue, status, n in rows:
                if status != Status.QUEUED.value:
                    found.append(QueueCount(queue, Status(status), n))
                    continue
                detail = conn.execute(queries.QUEUED_DETAIL, (queue, now, WAITS_FOR_ITS_TYPE))
                oldest, later, unknown = cast(
                    "tuple[float | None, float, int]", detail.fetchall()[0]
                )
                found.append(QueueCount(queue, Status.QUEUED, n, oldest, n - int(later), unknown))
        return found

    def _check_counts(self, repair: bool) -> list[CountDrift]:
        if not repair:
            with self.file.reading() as conn:
                rows = conn.execute(queries.COUNT_DRIFT).fetchall()
            return _drift(rows)
        with self._transaction(prompt=True):  # the write lock: no writer meanwhile
            conn = self.file.session()[0]
            rows = conn.execute(queries.COUNT_DRIFT).fetchall()
            if rows:
                conn.execute(queries.CLEAR_COUNTS)
                conn.execute(queries.MARK_COUNTED)
                conn.execute(queries.RECOUNT)
        return _drift(rows)

    def _purge(self, status: Status, queue: str | None, before: float | None, limit: int) -> int:
        sql, args = queries.purge(status.value, queue, before, limit)
        with self._transaction(prompt=True):
            conn = self.file.session()[0]
            conn.execute(sql, args)
            deleted = int(conn.changes())
        return deleted

    def _dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        with self.file.reading() as conn:
            return SQLiteTx(conn, conn.cursor(), self.clock()).dependencies(job_id)

    def _expire_results(self, now: float, limit: int) -> int:
        with self._transaction():
            conn = self.file.session()[0]
            conn.execute(queries.EXPIRED_GONE, (now, limit))
            purged = int(conn.changes())
            conn.execute(queries.EXPIRED_KEPT, (now, limit))
            purged += int(conn.changes())
            # (and the rows of dependents deleted on completion, or purged)
            conn.execute(queries.ORPHAN_DEPENDENCIES, (limit,))
        return purged

    def _read_active(self) -> list[Record]:
        with self.file.reading() as conn:
            rows = conn.execute(queries.ACTIVE).fetchall()
        return [record_of(r) for r in rows]

    def _schedules(self) -> list[ScheduleInfo]:
        with self.file.reading() as conn:
            return [ScheduleInfo(*row) for row in conn.execute(queries.SCHEDULES)]

    def _set_paused(self, queue: str, paused: bool) -> None:
        with self._transaction(prompt=True):
            self.file.session()[0].execute(queries.SET_PAUSED, (queue, int(paused)))

    def _paused(self) -> set[str]:
        with self.file.reading() as conn:
            return {row[0] for row in conn.execute(queries.PAUSED)}

    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        # The claim index orders run_at within (queue, priority): seek the first job of each
        # such group rather than scan every queued job (a million delayed jobs, say).
        best: float | None = None
        # One snapshot: read apart, a claim between the top priority and its first run_at
        # could empty that priority's group (a NULL where a time was expected).
        with self.file.reading() as conn, conn:
            if queues is None:
                names = [row[0] for row in conn.execute(queries.QUEUE_NAMES)]
            else:
                names = list(dict.fromkeys(queues))
            paused = {row[0] for row in conn.execute(queries.PAUSED)}
            for name in names:
                if name in paused:
                    continue
                priority = _scalar(conn, queries.TOP_PRIORITY, (name,))
                while priority is not None:
                    due = float(_scalar(conn, queries.FIRST_DUE, (name, priority)))
                    best = due if best is None else min(best, due)
                    priority = _scalar(conn, queries.NEXT_PRIORITY, (name, priority))
        return best

    def _data_version(self) -> object:
        # Changes whenever another connection commits. An idle worker also notices here,
        # within its poll, that its file was deleted or replaced.
        with self.file.reading() as conn:
            self.file.check_in_place(conn)
            # (Each connection counts on its own: a reopened one may repeat a number.)
            return self.file.opens, _scalar(conn, queries.DATA_VERSION)

    # -- the file ------------------------------------------------------------
    def integrity(self, *, full: bool = False) -> list[str]:
        """The problems SQLite finds in the file (`PRAGMA quick_check`, or with full=True
        the slower `integrity_check`, which also checks indexes against their tables);
        empty when there are none."""
        pragma = "integrity_check" if full else "quick_check"
        found: list[str] = []
        with self.file.reading() as conn:
            try:
                found.extend(str(row[0]) for row in conn.execute(f"PRAGMA {pragma}"))
            except apsw.CorruptError as exc:  # damage that stops the check itself
                found.append(f"the check stopped: {exc}")
        return [] if found == ["ok"] else found

    def checkpoint(self) -> tuple[bool, int]:
        """Copy the write-ahead log into the file and empty it (`wal_checkpoint(TRUNCATE)`);
        return (whether it got through, the log's size after, in bytes)."""
        with self.file.reading() as conn:
            row = conn.execute(queries.EMPTY_WAL).fetchone()
        return (row is not None and row[0] == 0), self.wal_bytes()

    def vacuum(
        self, page_size: int | None = None, progress: Callable[[], None] | None = None
    ) -> None:
        """Rewrite the file compactly (VACUUM), with `page_size` pages if given; `progress`
        is called now and then meanwhile. A new page size needs the file to itself: a
        StoreError says so while another process has it open."""
        if page_size is not None and page_size not in PAGE_SIZES:
            raise ValueError(
                f"page_size must be a power of two from 512 to 65536, not {page_size!r}"
            )
        with self.file.reading() as conn:
            if progress is not None:

                def going_on() -> bool:
                    progress()
                    return False  # (True would stop the statement)

                conn.set_progress_handler(going_on, 100_000)
            try:
                if page_size is None:
                    conn.execute(queries.VACUUM)
                    return
                # Only a rollback journal lets VACUUM change the page size, and SQLite leaves
                # WAL only when no other connection has the file open.
                if conn.execute(queries.ROLLBACK_JOURNAL).fetchall() != [("delete",)]:
                    raise StoreError(
                        f"{self.path} is in use by another process (a worker?): stop every "
                        "process that uses it, then convert it"
                    )
                try:
                    conn.execute(f"{queries.PAGE_SIZE} = {int(page_size)}").fetchall()
                    conn.execute(queries.VACUUM)
                finally:
                    conn.execute(queries.WAL_JOURNAL).fetchall()
            finally:
                conn.set_progress_handler(None)

    def page_size_now(self) -> int:
        """The file's page size, in bytes."""
        with self.file.reading() as conn:
            return int(_scalar(conn, queries.PAGE_SIZE))

    def wal_bytes(self) -> int:
        """The size of the file's write-ahead log, `<path>-wal`, in bytes."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    def file_info(self) -> FileInfo:
        """This file's path, and its write-ahead log's size now."""
        return FileInfo(self.path, self.wal_bytes())

    def check_health(self) -> list[str]:
        """Warn when `<path>-wal` passes `wal_warning` bytes (then at each doubling) because
        a checkpoint cannot get past a reader."""
        size = self.wal_bytes()
        if size < self._wal_warn_at:
            return []
        with self.file.reading() as conn:
            row = conn.execute(queries.WAL_CHECKPOINT).fetchone()
        if row is None or row[2] >= row[1]:  # nothing holds it back: the log starts over
            return []
        self._wal_warn_at = 2 * size
        return [
            f"{self.path}-wal has grown to {size >> 20} MiB: checkpoints cannot get past a "
            "reader that keeps a transaction open on the file (a long query or report, a "
            "backup tool, an open sqlite3 shell?); it stops growing once that reader ends, "
            f"and shrinks to {JOURNAL_LIMIT >> 20} MiB after"
        ]

    def close(self) -> None:
        """Close this process's connection (it reopens if the store is used again), and
        stop the thread of aenqueue and aget, and the watch on the log."""
        super().close()
        self._waker.close()
        self.file.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}{', shared=True' if self.shared else ''})"


def _scalar(conn: apsw.Connection, sql: str, args: Sequence[Any] = ()) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _drift(rows: list[tuple[Any, ...]]) -> list[CountDrift]:
    return [CountDrift(str(q), str(st), int(kept), int(n)) for q, st, kept, n in rows]
