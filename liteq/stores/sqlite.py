"""SQLiteStore: the queue is one SQLite file shared by every process on the host."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import importlib.resources
import json
import logging
import operator
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import apsw

from liteq.errors import StoreCorrupt, StoreError, StoreMoved
from liteq.managed import COLUMNS, Record, Status
from liteq.stores._base import BaseStore
from liteq.stores._contract import Changes, Event, StatusHook, Tx, start_run

log = logging.getLogger("liteq.store")

#: The schema version this code writes; older files are migrated on open.
SCHEMA_VERSION: Final = 4

# 1 -> 2: ids without AUTOINCREMENT (its counter cost a page write per enqueue) and one
# claim index instead of two. SQLite cannot drop AUTOINCREMENT in place: rebuild the table.
_V1_TO_V2 = """
CREATE TABLE liteq_jobs_v2 (
    id                 INTEGER PRIMARY KEY,
    job_type           TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    queue              TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN
                           ('unqueued', 'queued', 'running', 'wait_async', 'completed', 'failed')),
    attempts           INTEGER NOT NULL CHECK (attempts >= 0),
    max_attempts       INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at             REAL    NOT NULL,
    created_at         REAL    NOT NULL,
    started_at         REAL,
    finished_at        REAL,
    coalesce_id        TEXT,
    max_runtime        REAL,
    delete_on_complete INTEGER NOT NULL,
    error              TEXT,
    traceback          TEXT,
    owner              TEXT,
    lease_until        REAL,
    lock_token         TEXT,
    lock_until         REAL
);
INSERT INTO liteq_jobs_v2 SELECT * FROM liteq_jobs;
CREATE TABLE liteq_meta (
    one        INTEGER PRIMARY KEY CHECK (one = 1),
    high_water INTEGER NOT NULL
);
INSERT INTO liteq_meta VALUES (1, coalesce(
    (SELECT seq FROM sqlite_sequence WHERE name = 'liteq_jobs'), 0));
DROP TABLE liteq_jobs;
ALTER TABLE liteq_jobs_v2 RENAME TO liteq_jobs;
CREATE INDEX liteq_jobs_claim ON liteq_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE UNIQUE INDEX liteq_jobs_coalesce ON liteq_jobs (coalesce_id)
    WHERE coalesce_id IS NOT NULL
      AND status IN ('unqueued', 'queued', 'running', 'wait_async', 'failed');
CREATE INDEX liteq_jobs_active ON liteq_jobs (status)
    WHERE status IN ('running', 'wait_async');
CREATE TRIGGER liteq_jobs_high_water AFTER DELETE ON liteq_jobs
    WHEN NOT EXISTS (SELECT 1 FROM liteq_jobs WHERE id > old.id)
BEGIN
    UPDATE liteq_meta SET high_water = old.id WHERE high_water < old.id;
END;
"""

# 2 -> 3: status tests without IN lists of more than two values (schema.sql says why).
# A CHECK constraint cannot be changed in place: rebuild the table.
_V2_TO_V3 = """
CREATE TABLE liteq_jobs_v3 (
    id                 INTEGER PRIMARY KEY,
    job_type           TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    queue              TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status = 'unqueued' OR status = 'queued'
                           OR status = 'running' OR status = 'wait_async'
                           OR status = 'completed' OR status = 'failed'),
    attempts           INTEGER NOT NULL CHECK (attempts >= 0),
    max_attempts       INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at             REAL    NOT NULL,
    created_at         REAL    NOT NULL,
    started_at         REAL,
    finished_at        REAL,
    coalesce_id        TEXT,
    max_runtime        REAL,
    delete_on_complete INTEGER NOT NULL,
    error              TEXT,
    traceback          TEXT,
    owner              TEXT,
    lease_until        REAL,
    lock_token         TEXT,
    lock_until         REAL
);
INSERT INTO liteq_jobs_v3 SELECT * FROM liteq_jobs;
DROP TABLE liteq_jobs;
ALTER TABLE liteq_jobs_v3 RENAME TO liteq_jobs;
CREATE INDEX liteq_jobs_claim ON liteq_jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE UNIQUE INDEX liteq_jobs_coalesce ON liteq_jobs (coalesce_id)
    WHERE coalesce_id IS NOT NULL AND status <> 'completed';
CREATE INDEX liteq_jobs_active ON liteq_jobs (status)
    WHERE status IN ('running', 'wait_async');
CREATE TRIGGER liteq_jobs_high_water AFTER DELETE ON liteq_jobs
    WHEN NOT EXISTS (SELECT 1 FROM liteq_jobs WHERE id > old.id)
BEGIN
    UPDATE liteq_meta SET high_water = old.id WHERE high_water < old.id;
END;
"""

# 3 -> 4: a live worker's lease and max_runtime in its host's monotonic clock (schema.sql).
_V3_TO_V4 = """
ALTER TABLE liteq_jobs ADD COLUMN lease_mono REAL;
ALTER TABLE liteq_jobs ADD COLUMN deadline_mono REAL;
"""

#: Migrations from version N to N+1, applied in order inside one transaction.
MIGRATIONS: Final[dict[int, str]] = {1: _V1_TO_V2, 2: _V2_TO_V3, 3: _V3_TO_V4}

_COLS = ", ".join(COLUMNS)
_SELECT = f"SELECT {_COLS} FROM liteq_jobs"
# A new id: above every id there is and every id there was (schema.sql, liteq_meta).
_NEXT_ID_QUERY = (
    "SELECT max(coalesce((SELECT max(id) FROM liteq_jobs), 0), high_water) + 1 FROM liteq_meta"
)
_NEXT_ID = f"({_NEXT_ID_QUERY})"
_INSERT_PLAIN = (
    f"INSERT INTO liteq_jobs ({_COLS}) VALUES ({_NEXT_ID}, {', '.join('?' * (len(COLUMNS) - 1))})"
)
# A held coalesce id makes it insert nothing (then changes() is 0). No RETURNING: it costs
# more than asking for the new rowid.
_INSERT = f"{_INSERT_PLAIN} ON CONFLICT DO NOTHING"
# Many jobs with the same options in one statement: their (type, payload) pairs go in as one
# JSON array, which SQLite walks in C; ids are consecutive from the next id, ?9, read first:
# a SELECT that read liteq_jobs itself would make SQLite copy every row into a temporary
# table before inserting any (measured: 28 % more CPU instructions per row).
_INSERT_BATCH = (
    f"INSERT INTO liteq_jobs ({_COLS}) SELECT ?9 + key, value ->> 0, value ->> 1, "
    "?1, ?2, 'queued', 0, ?3, ?4, ?5, NULL, NULL, NULL, ?6, ?7, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM json_each(?8)"
)
# The same when they are all of one type (most batches): a JSON array of their payloads.
_INSERT_BATCH_OF_TYPE = (
    f"INSERT INTO liteq_jobs ({_COLS}) SELECT ?9 + key, ?10, value, "
    "?1, ?2, 'queued', 0, ?3, ?4, ?5, NULL, NULL, NULL, ?6, ?7, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM json_each(?8)"
)
#: What the jobs of one _INSERT_BATCH share: their options (every other column is as
#: build_records makes it for a new job).
_shared: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(
    "queue",
    "priority",
    "max_attempts",
    "run_at",
    "created_at",
    "max_runtime",
    "delete_on_complete",
)
#: The other columns, and what they are in a new job.
_fresh: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(
    *("status", "attempts", "coalesce_id", "started_at", "finished_at", "error", "traceback"),
    *("owner", "lease_until", "lock_token", "lock_until", "lease_mono", "deadline_mono"),
)
_FRESH = (Status.QUEUED, 0, *(None,) * 13)
_UPDATE = (
    "UPDATE liteq_jobs SET " + ", ".join(f"{c} = ?" for c in COLUMNS if c != "id") + " WHERE id = ?"
)
_FENCE = " AND owner = ? AND attempts = ? AND status = 'running'"
_DELETE_FENCED = "DELETE FROM liteq_jobs WHERE id = ?" + _FENCE

#: The longest sleep between tries for the writer gate: of a worker's claim loop, and of
#: any other write (an enqueue from a web request, say). A busy worker holds the gate ~70 %
#: of the time and takes it again ~35 µs after it lets go, so a waiter that tries every
#: 1 ms may lose many times in a row: beside two workers draining noop jobs an enqueue's
#: p99 was 11-15 ms, and 5-7 ms when it tried at least every 100 µs. Workers themselves
#: keep the longer sleep: each hand-off between them costs the next one its page cache.
#: Longer waits barely help two noop workers (first wait 1 ms: no change; 20 ms: 0.91 ->
#: 0.97 of one worker) and would idle a worker with real jobs while the other commits.
_PATIENT: Final = 1e-3
_PROMPT: Final = 100e-6

#: Statements apsw keeps prepared per connection (its default is 100). It finds one by
#: comparing hashes with each kept statement's, in turn, on every execute: 32 rather than
#: 100 took ~1,000 CPU instructions off an enqueue. A draining worker and its enqueuer run
#: 11 distinct statements (13 with prefetch), counted with an exec trace.
_STATEMENT_CACHE: Final = 32

#: The page size of a new queue file unless SQLiteStore(page_size=...) names one (SQLite's
#: default is 4 KiB; a file that exists keeps its own). Each commit appends every page it
#: changed to the WAL, and each checkpoint writes them back and syncs: with 1 KiB pages an
#: enqueue wrote 2.9 KB rather than 9.2 (strace, pwrite bytes per job), and a
#: one-job-per-commit queue ran 10-40 % faster (raw SQLite loop: enqueue 37,600 ->
#: 51,000/s, claim+complete 21,600 -> 27,600/s). A job whose state is 10 KB or more
#: spills into overflow pages instead: 4 KiB pages ran such jobs 1.10-1.22x as fast (100 KB:
#: 1.36-1.67x; bench/pages.py), and batches of 100 noop jobs 7-15 % faster (enqueue_many,
#: prefetch=100). 512 bytes was slower than 1 KiB; 2 KiB got half the gain, at ~5 % on batches.
_PAGE_SIZE: Final = 1024
#: After a checkpoint that empties the WAL, SQLite truncates `-wal` to this size.
_JOURNAL_LIMIT: Final = 64 << 20
_PAGE_SIZES: Final = frozenset(512 << n for n in range(8))  # what SQLite accepts
_TOLD_PAGE_SIZE: set[str] = set()  # files whose page size differs from the one asked for

# No connection is open across fork(). SQLite keeps its locking state per file for the whole
# process, and the kernel's POSIX locks are not inherited: a child that opened its own
# connection beside an inherited one would believe it holds locks it does not, and the next
# process to open the file would think itself alone and reset the WAL under live writers.
# So before fork() every store closes its connection (each process reopens on first use),
# holding its mutex until the fork is done so that no thread reopens it meanwhile.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_HELD: list[SQLiteStore] = []  # stores whose mutex is held across the fork
#: Files that a connection this process inherited still has open (not one of liteq's stores,
#: or one caught mid-transaction): unsafe to open here.
_UNSAFE: set[str] = set()
#: Those connections, kept referenced: a collected one would be closed, touching the file.
_INHERITED: list[apsw.Connection] = []


def _before_fork() -> None:
    for store in list(_STORES):
        store._mutex.acquire()
        _HELD.append(store)
        store._close_for_fork()


def _after_fork_in_parent() -> None:
    while _HELD:
        _HELD.pop()._mutex.release()


def _after_fork_in_child() -> None:
    while _HELD:
        _HELD.pop()._forked()
    for conn in apsw.connections():
        _INHERITED.append(conn)
        if conn.filename:
            _UNSAFE.add(os.path.realpath(conn.filename))


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


# Linux lets a thread's sleeps end up to its "timer slack" late, 50 µs by default: a 20 µs
# sleep for the writer gate took 105 µs (measured). While a prompt write (an enqueue, say)
# waits for the gate, its thread asks for 1 ns, then gets its own slack back: beside two
# busy workers an enqueue's p50 went from 0.29-0.31 to 0.24-0.25 ms, p90 from 1.9-2.1 to
# 1.4-1.7 ms. Workers keep the default: hand-offs between them cost page caches.
_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30
_prctl: Callable[..., int] | None = None
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _precise_sleeps() -> int | None:
    """Set this thread's timer slack to 1 ns; return the slack to restore (None: unchanged)."""
    if _prctl is None:
        return None
    old = _prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    if old <= 1 or _prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0) != 0:
        return None
    return old


def schema_sql() -> str:
    """The text of schema.sql (inside the wheel, or beside the package in a checkout)."""
    packaged = importlib.resources.files("liteq").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "schema.sql").read_text(encoding="utf-8")


def _row(conn: apsw.Connection, sql: str, args: Sequence[Any] = ()) -> Sequence[Any]:
    row: Sequence[Any] | None = conn.execute(sql, args).fetchone()
    if row is None:
        raise StoreError(f"no row from {sql!r}")
    return row


def _scalar(conn: apsw.Connection, sql: str, args: Sequence[Any] = ()) -> Any:
    return _row(conn, sql, args)[0]


_STATUS = {s.value: s for s in Status}


def _record(row: Sequence[Any]) -> Record:
    record = Record(*row)
    record.status = _STATUS[record.status]
    record.delete_on_complete = bool(record.delete_on_complete)
    return record


#: A row's values in column order (a Status binds as its text: it is a str).
_values: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS)
#: The same without the id, which an insert computes.
_new_values: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS[1:])


#: _claim_sql's queue count meaning "every queue, while only one holds queued jobs".
_ONLY_QUEUE: Final = 0
_FIRST_QUEUE = "(SELECT min(queue) FROM liteq_jobs WHERE status = 'queued')"
_LAST_QUEUE = "(SELECT max(queue) FROM liteq_jobs WHERE status = 'queued')"


# Every queue holding queued jobs (and a NULL to end), a seek each.
_NAMES = (
    f"WITH RECURSIVE names(name) AS ({_FIRST_QUEUE[1:-1]} UNION ALL "
    "SELECT (SELECT min(queue) FROM liteq_jobs WHERE status = 'queued' AND queue > name) "
    "FROM names WHERE name IS NOT NULL)"
)
_QUEUE_NAMES = f"{_NAMES} SELECT name FROM names WHERE name IS NOT NULL"
# A bound value compared with an indexed column is written `+?`: this SQLite is built with
# STAT4, and a plain `?` there costs a re-plan on every run (~10 µs, measured); `+` keeps
# the value out of the planner and the index is used all the same.
_TOP_PRIORITY = "SELECT max(priority) FROM liteq_jobs WHERE status = 'queued' AND queue = +?1"
_FIRST_DUE = (
    "SELECT min(run_at) FROM liteq_jobs WHERE status = 'queued' AND queue = +?1 AND priority = +?2"
)


@functools.cache
def _pick_sql(queue_count: int | None, limit: int) -> str:
    """The rows of the best `limit` due jobs of these queues (None: every queue), best first.

    The claim index is per queue. For one queue this is a plain seek; so it is for every
    queue (_ONLY_QUEUE) while a single queue holds queued jobs: two more seeks check that,
    and the statement selects nothing otherwise. For several queues it takes the best
    `limit` of each (every queue's name comes from the index, a seek per name) and then
    the best of those, which costs about twice as much.
    Parameters: ?1 now, ?2… the queue names.
    """
    due = "AND run_at <= ?1 AND (lock_token IS NULL OR lock_until < ?1) "
    best = f"ORDER BY priority DESC, run_at, id LIMIT {int(limit)}"
    if queue_count in (1, _ONLY_QUEUE):
        queue, only = "+?2", ""
        if queue_count == _ONLY_QUEUE:
            queue, only = _FIRST_QUEUE, f"AND {_FIRST_QUEUE} = {_LAST_QUEUE} "
        return f"{_SELECT} WHERE status = 'queued' AND queue = {queue} {due}{only}{best}"
    if queue_count is None:
        names = _NAMES
    else:
        values = ", ".join(f"(?{2 + i})" for i in range(queue_count))
        names = f"WITH names(name) AS (VALUES {values})"
    return (
        f"{names} SELECT {', '.join(f'c.{c}' for c in COLUMNS)} FROM names, liteq_jobs AS c "
        "WHERE c.id IN (SELECT id FROM liteq_jobs WHERE status = 'queued' "
        f"AND queue = names.name {due}{best}) ORDER BY c.priority DESC, c.run_at, c.id "
        f"LIMIT {int(limit)}"
    )


# What a claim writes: what start_run makes of each row it picked. (Picked, then written:
# inside BEGIN IMMEDIATE nothing can come between. One UPDATE … RETURNING would do both,
# but SQLite fills a temporary table with what RETURNING returns: 10 % of the CPU
# instructions of a noop job.)
_START_RUN = (
    "UPDATE liteq_jobs SET status = 'running', attempts = attempts + 1, started_at = ?1, "
    "finished_at = NULL, owner = ?2, lease_until = ?3, lease_mono = ?4, "
    "deadline_mono = ?5 + max_runtime WHERE id "
)
_START_ONE = f"{_START_RUN}= ?6"
_START_MANY = f"{_START_RUN}IN (SELECT value FROM json_each(?6))"  # one statement per batch


def _schema(conn: apsw.Connection) -> tuple[int, list[str]]:
    """The file's user_version and its tables (reads only; SQLite's own are left out)."""
    version = int(_scalar(conn, "PRAGMA user_version"))
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite^_%' ESCAPE '^' ORDER BY name"
        )
    ]
    return version, tables


def _refusal(version: int, tables: list[str]) -> str | None:
    """Why a file with this user_version and these tables is no liteq queue (completing
    "<path> …"), or None: a liteq queue, or a file empty of tables that liteq may set up."""
    foreign = [t for t in tables if not t.startswith("liteq_")]
    if foreign or (version != 0 and "liteq_jobs" not in tables):
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        return (
            f"is another application's database (tables: {shown or 'none'}; user_version "
            f"{version}): liteq keeps its queue in a file of its own; give it a new path, "
            "such as jobs.sqlite beside it"
        )
    if version > SCHEMA_VERSION:
        return (
            f"has schema version {version}, newer than this liteq understands "
            f"({SCHEMA_VERSION}): upgrade liteq"
        )
    if version == 0 and tables:
        return f"has liteq's tables ({', '.join(tables)}) but no schema version"
    return None


class _SQLiteTx(Tx):
    def __init__(self, conn: apsw.Connection, now: float) -> None:
        super().__init__(now, time.monotonic())
        self._conn = conn
        # One cursor for its statements: Connection.execute makes a cursor on every call
        # (0.6 µs; five statements a job). Each statement here runs to its end, or the
        # next one on the cursor resets it. (_Transaction uses its connection's cursor.)
        self._cursor = conn.cursor()

    def get(self, job_id: int) -> Record | None:
        row = self._cursor.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        row = self._cursor.execute(
            f"{_SELECT} WHERE coalesce_id = +? AND status <> 'completed'", (coalesce_id,)
        ).fetchone()
        return None if row is None else _record(row)

    def insert(self, record: Record) -> int | None:
        self._cursor.execute(_INSERT, _new_values(record))
        conn = self._conn
        return conn.last_insert_rowid() if conn.changes() else None

    def insert_many(self, records: Sequence[Record], uniform: bool = False) -> list[int | None]:
        if len(records) < 2:  # (no call through Tx.insert_many for one job)
            return [self.insert(record) for record in records]
        if not uniform and any(r.coalesce_id is not None for r in records):
            return super().insert_many(records)
        # No coalesce id, so no conflict. Inside this BEGIN IMMEDIATE no other writer can
        # interleave, and each row's id is the last one's + 1.
        shared = _shared(records[0])
        # (Jobs whose classes give enqueue options are not uniform, but may agree.)
        if uniform or all(_shared(r) == shared and _fresh(r) == _FRESH for r in records):
            cursor = self._cursor
            first_id = next(cursor.execute(_NEXT_ID_QUERY))[0]  # (liteq_meta has its row)
            job_type = records[0].job_type
            if all(r.job_type == job_type for r in records):
                payloads = json.dumps([r.payload for r in records])
                cursor.execute(_INSERT_BATCH_OF_TYPE, (*shared, payloads, first_id, job_type))
            else:
                pairs = json.dumps([(r.job_type, r.payload) for r in records])
                cursor.execute(_INSERT_BATCH, (*shared, pairs, first_id))
        else:
            self._cursor.executemany(_INSERT_PLAIN, [_new_values(r) for r in records])
        last = self._conn.last_insert_rowid()
        return list(range(last - len(records) + 1, last + 1))

    def update(self, record: Record) -> None:
        values = _values(record)
        self._cursor.execute(_UPDATE, (*values[1:], values[0]))

    def delete(self, job_id: int) -> None:
        self._cursor.execute("DELETE FROM liteq_jobs WHERE id = ?", (job_id,))

    def claim(
        self, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        names = None if queues is None else tuple(dict.fromkeys(queues))
        if names == ():
            return []
        now = self.now
        args = (now, *(names or ()))
        rows = []
        if names is None:  # most often a single queue holds jobs: try the plain pick first
            rows = self._cursor.execute(_pick_sql(_ONLY_QUEUE, limit), args).fetchall()
        if not rows:
            sql = _pick_sql(None if names is None else len(names), limit)
            rows = self._cursor.execute(sql, args).fetchall()
        batch, mono = limit > 1, self.mono
        records = [start_run(_record(r), now, mono, owner, lease, batch) for r in rows]
        if not records:
            return records
        lease_until, lease_mono = records[0].lease_until, records[0].lease_mono
        if len(records) == 1:
            started = records[0].started_at
            clock = None if started is None else mono  # deadline_mono: started ones only
            self._cursor.execute(
                _START_ONE, (started, owner, lease_until, lease_mono, clock, records[0].id)
            )
            return records
        for started in {r.started_at for r in records}:  # now, or None (start_run)
            ids = json.dumps([r.id for r in records if r.started_at == started])
            clock = None if started is None else mono
            self._cursor.execute(_START_MANY, (started, owner, lease_until, lease_mono, clock, ids))
        return records

    def fenced_write_many(self, writes: Sequence[tuple[Record, Changes | None]]) -> list[bool]:
        if len(writes) == 1:  # a worker's steady state
            return [self.fenced_write(*writes[0])]
        # Deletes of one owner's runs go in one statement, fenced on (id, attempts).
        deletes = [c for c, u in writes if u is None and c.owner is not None]
        owners = {c.owner for c in deletes}
        if len(deletes) < 2 or len(owners) != 1 or len(deletes) > 10_000:
            return super().fenced_write_many(writes)
        rows = ", ".join("(?, ?)" for _ in deletes)
        params = [v for c in deletes for v in (c.id, c.attempts)]
        gone = {
            row[0]
            for row in self._cursor.execute(
                f"DELETE FROM liteq_jobs WHERE (id, attempts) IN (VALUES {rows})"
                " AND owner = ? AND status = 'running' RETURNING id",
                (*params, deletes[0].owner),
            )
        }
        return [
            (claimed.id in gone) if changes is None else self.fenced_write(claimed, changes)
            for claimed, changes in writes
        ]

    def fenced_write(self, claimed: Record, changes: Changes | None) -> bool:
        fence = (claimed.id, claimed.owner, claimed.attempts)
        if changes is None:
            self._cursor.execute(_DELETE_FENCED, fence)
        else:
            columns = ", ".join(f"{name} = ?" for name in changes)  # names from liteq's code
            self._cursor.execute(
                f"UPDATE liteq_jobs SET {columns} WHERE id = ?{_FENCE}", (*changes.values(), *fence)
            )
        return bool(self._conn.changes())


class _Transaction(_SQLiteTx):
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on an error), holding the store's mutex: the
    transaction and its Tx in one object (it runs once or twice per job on the hot path).

    With `notify` (BaseStore._write), a commit then wakes this process's waiting workers
    and runs the status hooks. `max_pause` bounds the sleeps while it waits for the writer
    gate.
    """

    # (No _SQLiteTx.__init__: __enter__ gives the Tx its connection, cursor and time.)
    def __init__(self, store: SQLiteStore, notify: bool, max_pause: float) -> None:
        self._store = store
        self._notify = notify
        self._max_pause = max_pause
        self._gated = False  # holds the store's writer gate

    def __enter__(self) -> Tx:
        store = self._store
        store._mutex.acquire()
        try:
            self._conn, self._cursor = store._session()
            self._gated = store._enter_gate(self._max_pause)
            self._cursor.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            if self._gated:
                store._leave_gate()
            store._mutex.release()
            if isinstance(exc, apsw.Error):
                raise store._translate(exc) from exc
            raise
        self.now = store.clock()
        self.mono = time.monotonic()
        self.events = []
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        conn = self._conn
        store = self._store
        try:
            if kind is None:
                if not store._in_place(conn):  # nothing goes into a file no longer in use
                    conn.execute("ROLLBACK")
                    raise store._abandon(conn)
                try:
                    self._cursor.execute("COMMIT")
                except apsw.Error as error:
                    if not conn.get_autocommit():
                        conn.execute("ROLLBACK")
                    raise store._translate(error) from error
            else:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                if isinstance(exc, apsw.Error):
                    raise store._translate(exc) from exc
                return
        finally:
            try:
                if self._gated:
                    store._leave_gate()
            finally:
                store._mutex.release()
        if self._notify:  # committed
            store._committed(self.events)


class SQLiteStore(BaseStore):
    """The default store: one SQLite file, many processes on one host.

    Opens (creating with mode 0600 if needed) and migrates the file. WAL journal;
    `durability="normal"` (synchronous=NORMAL: survives a crash of any process,
    may lose the last commits on power loss) or `"full"` (survives power loss, slower).
    `wal_warning`: check_health warns once `<path>-wal` passes this many bytes.
    `page_size` is the page size in bytes of a file liteq creates (1024 unless given;
    4096 suits jobs whose states are 10 KB or more); a file that exists keeps its own.
    Each process opens its own connection, also after fork().

    Beside the file, `<path>-lock` (empty) lines up liteq's writers: each write
    transaction takes it first, so a waiting writer gets the file within about a
    millisecond of its release instead of sleeping in SQLite's busy handler.

        store = liteq.SQLiteStore("jobs.sqlite")
    """

    _poll_interval = 0.01
    _idle_poll_interval = 0.05

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Literal["normal", "full"] = "normal",
        page_size: int | None = None,
        busy_timeout: float = 10.0,
        wal_warning: int = 64 << 20,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
    ) -> None:
        super().__init__(clock=clock, on_status_change=on_status_change)
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        if page_size is not None and (type(page_size) is not int or page_size not in _PAGE_SIZES):
            raise ValueError(
                f"page_size must be a power of two from 512 to 65536 (bytes), not {page_size!r}"
            )
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError(
                f"SQLiteStore needs a file path, not {self.path!r}; "
                "use liteq.MemoryStore() for a queue in memory"
            )
        self.durability = durability
        self.page_size = page_size
        self.busy_timeout = busy_timeout
        self._wal_warn_at = wal_warning  # see check_health
        self._mutex = threading.RLock()
        self._conn: apsw.Connection | None = None
        self._session_pair: tuple[apsw.Connection, apsw.Cursor] | None = None
        self._pid = -1
        self._gate: int | None = None  # the descriptor of <path>-lock, see _enter_gate
        self._gate_closer: weakref.finalize[[int], SQLiteStore] | None = None  # on close or GC
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file, see _bind
        self._moved: str | None = None  # why the store no longer writes, see _gone
        self._moved_flag = ctypes.c_int(0)  # SQLITE_FCNTL_HAS_MOVED answers here
        self._moved_flag_address = ctypes.addressof(self._moved_flag)
        _STORES.add(self)
        self._db()

    # -- the connection ------------------------------------------------------
    def _close_for_fork(self) -> None:
        """Before fork(), with the mutex held: close the connection, unless a transaction
        is open on it (then the child must not use the file: see _after_fork_in_child)."""
        if self._conn is None or self._conn.get_autocommit():
            self._let_go()
        self._close_gate()  # (the child's copy of the descriptor would keep its flock alive)

    def _forked(self) -> None:
        """In the child after fork(): fresh locks; a connection left open is never used."""
        self._mutex = threading.RLock()
        self._bell = threading.Lock()
        self._bell.acquire()
        self._conn = self._session_pair = None

    def _db(self) -> apsw.Connection:
        return self._session()[0]

    def _session(self) -> tuple[apsw.Connection, apsw.Cursor]:
        """This process's connection, and the cursor its write transactions share (the
        mutex makes them take turns; a cursor costs 0.3 µs to make)."""
        # No os.getpid() here (a system call per transaction): a connection is never open
        # across fork() (_before_fork).
        pair = self._session_pair
        if pair is None:
            with self._errors():
                conn = self._conn = self._open()
            self._pid = os.getpid()
            pair = self._session_pair = conn, conn.cursor()
        return pair

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
        if not path.exists():
            if self._identity is not None:
                raise self._gone("deleted")
            if not path.parent.is_dir():
                raise StoreError(f"cannot create {self.path}: {path.parent} is not a directory")
            # Create it 0600 before SQLite does (its -wal and -shm files copy this mode).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = apsw.Connection(self.path, statementcachesize=_STATEMENT_CACHE)
        try:
            conn.setbusytimeout(int(self.busy_timeout * 1000))
            # Look before anything is written: a file liteq must not use stays as it was.
            found = self._inspect(conn)
            self._bind(found)
        except BaseException:
            conn.close()
            raise
        self._open_gate()
        # Before anything writes the header: SQLite applies it to an empty file only (a
        # file that exists keeps its page size; read back only to tell a user who asked).
        conn.execute(f"PRAGMA page_size = {self.page_size or _PAGE_SIZE}").fetchall()
        self._pragma(conn, "journal_mode", "wal", "wal")
        if self.page_size is not None:
            kept = _scalar(conn, "PRAGMA page_size")
            if kept != self.page_size and self.path not in _TOLD_PAGE_SIZE:
                _TOLD_PAGE_SIZE.add(self.path)  # once per process (and its forked workers)
                log.warning(
                    "%s keeps its %d-byte pages: page_size=%d applies to a new file only",
                    self.path,
                    kept,
                    self.page_size,
                )
        sync = {"normal": 1, "full": 2}[self.durability]
        self._pragma(conn, "synchronous", sync, sync)
        self._pragma(conn, "journal_size_limit", _JOURNAL_LIMIT, _JOURNAL_LIMIT)
        # A claim's subqueries build small temporary tables: in memory, not in a temp file
        # (which cost ~150 µs a claim).
        self._pragma(conn, "temp_store", "memory", 2)
        self._migrate(conn)
        return conn

    def _inspect(self, conn: apsw.Connection) -> tuple[int, int]:
        """Refuse, having changed nothing, a file liteq must not use; return its identity."""
        if conn.readonly("main"):  # (SQLite opens a file it may not write read-only)
            raise StoreError(
                f"{self.path} is read-only for this process (its permissions, or a read-only "
                "file system): liteq must be able to write the queue file"
            )
        try:
            version, tables = _schema(conn)
        except apsw.Error as exc:
            raise self._translate(exc) from exc
        refusal = _refusal(version, tables)
        if refusal is not None:
            raise StoreError(f"{self.path} {refusal}")
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _bind(self, identity: tuple[int, int]) -> None:
        """A store stays with the file it first opened: reopened (after fork(), or close())
        on another file at its path, it refuses instead of writing elsewhere."""
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            raise self._gone("replaced")

    def _gone(self, how: str) -> StoreMoved:
        self._moved = (
            f"{self.path} was {how} while liteq had it open: nothing more is written to it "
            "from this process (jobs enqueued meanwhile went into the file that was there); "
            "restore the file, or restart every process that uses the queue"
        )
        return StoreMoved(self._moved)

    def _in_place(self, conn: apsw.Connection) -> bool:
        """Whether the path still names the file `conn` has open (one stat, in SQLite)."""
        conn.file_control("main", apsw.SQLITE_FCNTL_HAS_MOVED, self._moved_flag_address)
        return not self._moved_flag.value

    def _check_in_place(self, conn: apsw.Connection) -> None:
        """Raise StoreMoved, and give up the connection, if its file left the path."""
        if not self._in_place(conn):
            raise self._abandon(conn)

    def _abandon(self, conn: apsw.Connection) -> StoreMoved:
        # Move what the log holds into the file it belongs to (wherever that is now) and
        # empty `<path>-wal`: a file put at the path would otherwise be read through a log
        # of another database. Then never close the connection: closing the last one
        # deletes `<path>-wal` by name, which may by then be the new file's.
        with contextlib.suppress(apsw.Error):
            conn.setbusytimeout(100)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        _INHERITED.append(conn)
        self._conn = self._session_pair = None
        self._close_gate()
        return self._gone("deleted or replaced")

    def _pragma(self, conn: apsw.Connection, name: str, value: object, expect: object) -> None:
        # One statement per call, read back: a pragma can fail silently (WAL on a busy file).
        for attempt in range(50):
            conn.execute(f"PRAGMA {name} = {value}").fetchall()
            got = conn.execute(f"PRAGMA {name}").fetchone()
            if got is not None and got[0] == expect:
                return
            time.sleep(0.02 * (attempt + 1))
        raise StoreError(f"could not set PRAGMA {name}={value} on {self.path} (got {got!r})")

    def _migrate(self, conn: apsw.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Again, now that no other process can be initialising it meanwhile.
            version, tables = _schema(conn)
            refusal = _refusal(version, tables)
            if refusal is not None:
                raise StoreError(f"{self.path} {refusal}")
            if version == 0:
                # Iterate: apsw runs a script's later statements only as its cursor advances.
                for _ in conn.execute(schema_sql()):
                    pass
            else:
                for step in range(version, SCHEMA_VERSION):
                    for _ in conn.execute(MIGRATIONS[step]):
                        pass
                    conn.execute(f"PRAGMA user_version = {step + 1}")
            got = _scalar(conn, "PRAGMA user_version")
            if got != SCHEMA_VERSION:
                raise StoreError(f"schema of {self.path} is at {got}, expected {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- the writer gate -----------------------------------------------------
    # SQLite's busy handler sleeps 1, 2, 5 … 100 ms between tries, so a worker that finds
    # the file locked sleeps through many of the other's transactions (measured: two noop
    # workers with prefetch 100 ran no faster than one). A writer that cannot take the
    # gate at once retries after 20 µs, doubling up to _PATIENT (a worker's claim loop) or
    # _PROMPT (an enqueue or another change a caller waits on), and takes SQLite's lock only
    # once it holds the gate. It is an flock: the kernel drops it when its holder dies.
    # Correctness never depends on it: SQLite's own lock and busy timeout still guard every
    # write, also against programs that know nothing of the gate.

    def _open_gate(self) -> None:
        self._close_gate()
        try:
            mode = os.stat(self.path).st_mode & 0o666  # as SQLite does for -wal and -shm
            gate = os.open(f"{self.path}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            log.info("writing %s without a writer gate: %s", self.path, exc)
            return
        self._gate = gate
        # A store dropped without close() must not leak the descriptor.
        self._gate_closer = weakref.finalize(self, os.close, gate)

    def _close_gate(self) -> None:
        # After fork() this closes the child's copy only: the parent's flock stays.
        closer, self._gate_closer = self._gate_closer, None
        self._gate = None
        if closer is not None:
            closer()  # closes the descriptor, once

    def _enter_gate(self, max_pause: float) -> bool:
        """Take the writer gate; False if this store has none (then SQLite alone waits)."""
        gate = self._gate
        if gate is None:
            return False
        deadline = 0.0
        pause = 20e-6
        slack = None
        try:
            while True:
                try:
                    fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + self.busy_timeout
                        if max_pause <= _PROMPT:  # a caller waits: try on time
                            slack = _precise_sleeps()
                    elif now > deadline:
                        raise self._stayed_locked(f"waiting for {self.path}-lock") from None
                    time.sleep(pause)
                    pause = min(pause * 2, max_pause)
                except OSError as exc:  # a file system without flock: go on without the gate
                    log.info("writing %s without a writer gate: %s", self.path, exc)
                    self._close_gate()
                    return False
                else:
                    return True
        finally:
            if slack is not None and _prctl is not None:
                _prctl(_PR_SET_TIMERSLACK, slack, 0, 0, 0)

    def _leave_gate(self) -> None:
        if self._gate is not None:  # (None if the store was closed meanwhile)
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except apsw.Error as exc:
            raise self._translate(exc) from exc

    def _stayed_locked(self, detail: str) -> StoreError:
        return StoreError(
            f"{self.path} stayed locked by another process for more than "
            f"{self.busy_timeout}s: {detail}"
        )

    def _translate(self, exc: apsw.Error) -> Exception:
        """An apsw error in words a user understands (others pass through unchanged)."""
        if isinstance(exc, apsw.BusyError):
            return self._stayed_locked(str(exc))
        if isinstance(exc, apsw.FullError):
            return StoreError(f"the disk holding {self.path} is full: {exc}")
        if isinstance(exc, apsw.NotADBError | apsw.CorruptError):
            # Not transient: retrying cannot help, and writing on may spread the damage.
            return StoreCorrupt(
                f"{self.path} is not a usable SQLite database ({exc}): stop every process "
                "that uses it, then restore it from a backup, or save what it holds with "
                f"`sqlite3 {self.path} .recover | sqlite3 recovered.sqlite`; "
                f"`liteq db check --db {self.path}` checks a file"
            )
        if isinstance(exc, apsw.CantOpenError):
            return StoreError(f"cannot open {self.path}: {exc}")
        if isinstance(exc, apsw.ReadOnlyError):
            return StoreError(f"{self.path} is read-only: {exc}")
        if isinstance(exc, apsw.IOError):
            return StoreError(f"I/O error on {self.path}: {exc}")
        return exc

    def close(self) -> None:
        """Close this process's connection (it reopens if the store is used again)."""
        with self._mutex:
            self._let_go()

    def _let_go(self) -> None:
        """Close the connection, or, if its file is no longer at the path, abandon it."""
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            try:
                self._check_in_place(conn)
            except StoreMoved:
                return  # abandoned, not closed
            conn.close()
        self._conn = self._session_pair = None
        self._close_gate()

    # -- primitives ----------------------------------------------------------
    def _transaction(self) -> contextlib.AbstractContextManager[Tx]:
        return _Transaction(self, False, _PATIENT)

    def _write(self) -> contextlib.AbstractContextManager[Tx]:
        return _Transaction(self, True, _PROMPT)

    def _insert_alone(self, record: Record, events: list[Event]) -> None:
        # One INSERT in autocommit mode, as the floor's enqueue is: SQLite takes the write
        # lock before the statement reads anything (its program opens with a write
        # Transaction opcode), so, like BEGIN IMMEDIATE, it waits for the lock and never
        # meets the deferred read-then-write BUSY. Without BEGIN and COMMIT and the
        # transaction object an enqueue costs 8 % fewer CPU instructions (84.2k -> 77.3k).
        with self._mutex:
            conn, cursor = self._session()
            if not conn.get_autocommit():  # a transaction was left open: BEGIN will say so
                super()._insert_alone(record, events)
                return
            gated = self._enter_gate(_PROMPT)
            try:
                cursor.execute(_INSERT_PLAIN, _new_values(record))
                record.id = conn.last_insert_rowid()
                if not self._in_place(conn):  # committed, but to a file no longer in use
                    raise self._abandon(conn)
            except apsw.Error as exc:
                raise self._translate(exc) from exc
            finally:
                if gated:
                    self._leave_gate()
        self._committed(events)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[apsw.Connection]:
        with self._mutex, self._errors():
            yield self._db()

    def _read(self, job_id: int) -> Record | None:
        with self._reading() as conn:  # the same lookup a transaction makes, outside one
            return _SQLiteTx(conn, self.clock()).get(job_id)

    def _read_coalesce(self, coalesce_id: str) -> Record | None:
        with self._reading() as conn:
            return _SQLiteTx(conn, self.clock()).coalesce_holder(coalesce_id)

    @staticmethod
    def _filters(queue: str | None, status: Status | None) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if queue is not None:
            clauses.append("queue = ?")
            args.append(queue)
        if status is not None:
            clauses.append("status = ?")
            args.append(status.value)
        return "".join(f" AND {c}" for c in clauses), args

    def _count(self, queue: str | None, status: Status | None) -> int:
        where, args = self._filters(queue, status)
        with self._reading() as conn:
            return int(_scalar(conn, f"SELECT count(*) FROM liteq_jobs WHERE 1{where}", args))

    def _page(
        self, after_id: int, queue: str | None, status: Status | None, limit: int
    ) -> list[Record]:
        where, args = self._filters(queue, status)
        with self._reading() as conn:
            rows = conn.execute(
                f"{_SELECT} WHERE id > ?{where} ORDER BY id LIMIT ?", [after_id, *args, limit]
            ).fetchall()
        return [_record(r) for r in rows]

    def _read_active(self) -> list[Record]:
        with self._reading() as conn:
            rows = conn.execute(f"{_SELECT} WHERE status IN ('running', 'wait_async')").fetchall()
        return [_record(r) for r in rows]

    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        # The claim index orders run_at within (queue, priority): seek the first job of each
        # such group rather than scan every queued job (a million delayed jobs, say).
        best: float | None = None
        with self._reading() as conn:
            if queues is None:
                names = [row[0] for row in conn.execute(_QUEUE_NAMES)]
            else:
                names = list(dict.fromkeys(queues))
            for name in names:
                priority = _scalar(conn, _TOP_PRIORITY, (name,))
                while priority is not None:
                    due = float(_scalar(conn, _FIRST_DUE, (name, priority)))
                    best = due if best is None else min(best, due)
                    priority = _scalar(
                        conn, f"{_TOP_PRIORITY} AND priority < +?2", (name, priority)
                    )
        return best

    def _external_marker(self) -> object:
        # Changes whenever another connection commits; ~10 µs a call. An idle worker also
        # notices here, within its poll, that its file was deleted or replaced.
        with self._reading() as conn:
            self._check_in_place(conn)
            return _scalar(conn, "PRAGMA data_version")

    def integrity(self, *, full: bool = False) -> list[str]:
        """The problems SQLite finds in the file (`PRAGMA quick_check`, or with full=True
        the slower `integrity_check`, which also checks indexes against their tables);
        empty when there are none."""
        pragma = "integrity_check" if full else "quick_check"
        found: list[str] = []
        with self._reading() as conn:
            try:
                found.extend(str(row[0]) for row in conn.execute(f"PRAGMA {pragma}"))
            except apsw.CorruptError as exc:  # damage that stops the check itself
                found.append(f"the check stopped: {exc}")
        return [] if found == ["ok"] else found

    def wal_bytes(self) -> int:
        """The size of the file's write-ahead log, `<path>-wal`, in bytes."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    def check_health(self) -> list[str]:
        """Warn when `<path>-wal` passes `wal_warning` bytes (then at each doubling) because
        a checkpoint cannot get past a reader."""
        size = self.wal_bytes()
        if size < self._wal_warn_at:
            return []
        with self._reading() as conn:
            _, frames, copied = _row(conn, "PRAGMA wal_checkpoint(PASSIVE)")
        if copied >= frames:  # nothing holds it back: the next write starts the log over
            return []
        self._wal_warn_at = 2 * size
        return [
            f"{self.path}-wal has grown to {size >> 20} MiB: checkpoints cannot get past a "
            "reader that keeps a transaction open on the file (a long query or report, a "
            "backup tool, an open sqlite3 shell?); it stops growing once that reader ends, "
            f"and shrinks to {_JOURNAL_LIMIT >> 20} MiB after"
        ]

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"
