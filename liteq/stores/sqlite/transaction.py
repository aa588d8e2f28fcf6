"""SQLite's write transaction: BEGIN IMMEDIATE … COMMIT, and the Tx primitives inside it."""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import apsw

from liteq.record import COLUMNS_BUT_ID, Changes, Record
from liteq.status import Status
from liteq.stores.contract import ScheduleInfo, Tx, start_run
from liteq.stores.sqlite import queries
from liteq.stores.sqlite.gate import Busy

if TYPE_CHECKING:
    from liteq.stores.sqlite.file import QueueFile

_STATUS = {s.value: s for s in Status}


def record_of(row: Sequence[Any]) -> Record:
    """The Record of a row selected with queries' {columns}."""
    record = Record(*row)
    record.status = _STATUS[record.status]
    record.delete_on_complete = bool(record.delete_on_complete)
    return record


def schedule_values(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule's row as queries' declare_schedule and advance_schedule take it."""
    return {
        "name": info.name,
        "spec": info.spec,
        "tz": info.tz,
        "queue": info.queue,
        "last_slot": info.last_slot,
        "seen_at": info.seen_at,
    }


#: A new row's values, as queries.INSERT takes them: each column but the id.
new_values: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS_BUT_ID)
#: A row's values as queries.UPDATE takes them: each column but the id, then the id.
_update_values: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS_BUT_ID, "id")
#: What new jobs inserted by one INSERT_ALIKE share: queries.ALIKE, its first parameters.
_alike: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*queries.ALIKE)
_job_type: Callable[[Record], str] = operator.attrgetter("job_type")
_payload: Callable[[Record], str] = operator.attrgetter("payload")
#: apsw's binding of a tuple of texts as an array (SQLite's carray), in the builds of apsw that
#: have it (its wheels on PyPI do). Without it, or on Python's sqlite3 (a shared file, see
#: stdlib.py), insert_alike binds the payloads as a JSON array.
_ARRAY: Callable[[tuple[str, ...]], object] | None = getattr(apsw, "carray", None)

#: The statuses a running job can take without a change of its counter (schema.sql:
#: liteq_counts), and None: its status as it is.
_KEEPS_COUNTER: Final = frozenset({None, Status.QUEUED, Status.RUNNING})

#: New jobs are folded into the counters by the transaction whose new ids pass a multiple
#: of this (schema.sql: liteq_counts); until then a count reads at most about this many.
FOLD_EVERY = 512


#: A batch of new jobs alike this large is counted as it is inserted (insert_alike).
COUNT_AS_BATCH = 16


def fold_due(last_id: int, count: int) -> bool:
    """Whether new ids up to `last_id` (`count` of them) pass a multiple of FOLD_EVERY."""
    return last_id // FOLD_EVERY != (last_id - count) // FOLD_EVERY


def fold_counts(cursor: apsw.Cursor) -> None:
    """Count the jobs not yet counted into the counters (inside a write transaction)."""
    cursor.execute(queries.FOLD_COUNTS)
    cursor.execute(queries.MARK_COUNTED)


class SQLiteTx(Tx):
    """The primitives over one connection's cursor, inside a transaction."""

    __slots__ = ("_conn", "_cursor")

    def __init__(self, conn: apsw.Connection, cursor: apsw.Cursor, now: float) -> None:
        super().__init__(now, time.monotonic())
        self._conn = conn
        # One cursor for its statements (Connection.execute makes one per call). Each
        # statement here runs to its end, or the next one on the cursor resets it.
        self._cursor = cursor

    def get(self, job_id: int) -> Record | None:
        row = self._cursor.execute(queries.GET, (job_id,)).fetchone()
        return None if row is None else record_of(row)

    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        row = self._cursor.execute(queries.COALESCE_HOLDER, (coalesce_id,)).fetchone()
        return None if row is None else record_of(row)

    def insert(self, record: Record) -> int | None:
        self._cursor.execute(queries.INSERT_OR_NOTHING, new_values(record))
        conn = self._conn
        if not conn.changes():
            return None
        job_id: int = conn.last_insert_rowid()
        if fold_due(job_id, 1):
            fold_counts(self._cursor)
        return job_id

    def insert_many(self, records: Sequence[Record]) -> list[int | None]:
        if len(records) < 2 or any(r.coalesce_id is not None for r in records):
            return super().insert_many(records)
        # (Jobs whose classes give enqueue options are not alike, but may agree.)
        first = _alike(records[0])
        if all(_alike(r) == first for r in records):
            return list(self.insert_alike(records))
        self._cursor.executemany(queries.INSERT, [new_values(r) for r in records])
        return list(self._last_ids(len(records)))

    def insert_alike(self, records: Sequence[Record]) -> list[int]:
        if len(records) < 2:
            return [job_id for job_id in map(self.insert, records) if job_id is not None]
        # No coalesce id, so no conflict. Inside this BEGIN IMMEDIATE no other writer can
        # come between, and each row's id is the last one's + 1.
        cursor = self._cursor
        first_id = next(cursor.execute(queries.NEXT_ID))[0]  # (liteq_meta has its row)
        alike = _alike(records[0])
        job_type = records[0].job_type
        if len(set(map(_job_type, records))) == 1:
            payloads = tuple(map(_payload, records))
            if _ARRAY is not None and isinstance(cursor, apsw.Cursor):  # (not stdlib.py's)
                args = (*alike, first_id, _ARRAY(payloads), job_type)
                cursor.execute(queries.INSERT_ALIKE_ARRAY, args)
            else:
                args = (*alike, first_id, json.dumps(payloads), job_type)
                cursor.execute(queries.INSERT_ALIKE_OF_TYPE, args)
        else:
            pairs = json.dumps([(r.job_type, r.payload) for r in records])
            cursor.execute(queries.INSERT_ALIKE, (*alike, first_id, pairs))
        if len(records) < COUNT_AS_BATCH:
            return self._last_ids(len(records))
        # Counted now, by their number: folding them later would read each row back.
        last_id = first_id + len(records) - 1
        counted = (records[0].queue, records[0].status.value, len(records), first_id)
        cursor.execute(queries.COUNT_BATCH, counted)
        cursor.execute(queries.COUNTED_TO, (last_id,))
        return list(range(first_id, last_id + 1))

    def _last_ids(self, count: int) -> list[int]:
        last = self._conn.last_insert_rowid()
        if fold_due(last, count):
            fold_counts(self._cursor)
        return list(range(last - count + 1, last + 1))

    def update(self, record: Record) -> None:
        cursor = self._cursor
        cursor.execute(queries.COUNT_CHANGE, (record.id, record.queue, record.status.value))
        cursor.execute(queries.UPDATE, _update_values(record))

    def delete(self, job_id: int) -> None:
        self._cursor.execute(queries.DELETE, (job_id,))

    def claim(
        self, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        names = None if queues is None else tuple(dict.fromkeys(queues))
        if names == ():
            return []
        now, mono = self.now, self.mono
        args = (now, *(names or ()))
        rows = []
        if names is None:  # most often a single queue holds jobs: try the plain pick first
            rows = self._cursor.execute(queries.pick(queries.ONLY_QUEUE, limit), args).fetchall()
        if not rows:
            sql = queries.pick(None if names is None else len(names), limit)
            rows = self._cursor.execute(sql, args).fetchall()
        records = [start_run(record_of(r), now, mono, owner, lease) for r in rows]
        if records:
            lease_until, lease_mono = now + lease, mono + lease
            which: int | str = records[0].id
            start = queries.START_ONE
            if len(records) > 1:
                start, which = queries.START_MANY, json.dumps([r.id for r in records])
            self._cursor.execute(start, (now, owner, lease_until, lease_mono, mono, which))
        return records

    def declare_schedule(self, info: ScheduleInfo) -> None:
        self._cursor.execute(queries.DECLARE_SCHEDULE, schedule_values(info))

    def advance_schedule(self, info: ScheduleInfo) -> bool:
        self._cursor.execute(queries.ADVANCE_SCHEDULE, schedule_values(info))
        return bool(self._conn.changes())

    def schedule_job(self, name: str, job_id: int) -> None:
        self._cursor.execute(queries.SCHEDULE_JOB, (job_id, name))

    def add_dependencies(self, job_id: int, after: Sequence[tuple[int, bool]]) -> None:
        rows = [(job_id, after_id, int(done)) for after_id, done in after]
        self._cursor.executemany(queries.ADD_DEPENDENCY, rows)

    def dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        rows = self._cursor.execute(queries.DEPENDENCIES, (job_id,))
        return [(int(row[0]), bool(row[1])) for row in rows]

    def dependents(self, after_ids: Sequence[int]) -> list[int]:
        rows = self._cursor.execute(queries.DEPENDENTS, (json.dumps(list(after_ids)),))
        return [row[0] for row in rows]

    def finish_dependencies(self, after_ids: Sequence[int]) -> list[int]:
        if len(after_ids) == 1:  # a worker's steady state: no JSON to build and read
            rows = self._cursor.execute(queries.FINISH_DEPENDENCIES_OF_ONE, (after_ids[0],))
        else:
            rows = self._cursor.execute(queries.FINISH_DEPENDENCIES, (json.dumps(list(after_ids)),))
        return [row[0] for row in rows]

    def fenced_write_many(self, writes: Sequence[tuple[Record, Changes | None]]) -> list[bool]:
        if len(writes) == 1:  # a worker's steady state
            return [self.fenced_write(*writes[0])]
        # Deletes of one owner's runs go in one statement, fenced on (id, attempts).
        deletes = [c for c, u in writes if u is None and c.owner is not None]
        owners = {c.owner for c in deletes}
        if len(deletes) < 2 or len(owners) != 1 or len(deletes) > 10_000:
            return super().fenced_write_many(writes)
        params = [v for c in deletes for v in (c.id, c.attempts)]
        sql = queries.delete_fenced_many(len(deletes))
        gone = {row[0] for row in self._cursor.execute(sql, (*params, deletes[0].owner))}
        return [
            (claimed.id in gone) if changes is None else self.fenced_write(claimed, changes)
            for claimed, changes in writes
        ]

    def fenced_write(self, claimed: Record, changes: Changes | None) -> bool:
        fence = (claimed.id, claimed.owner, claimed.attempts)
        if changes is None:
            self._cursor.execute(queries.DELETE_FENCED, fence)
        else:
            status, queue = changes.get("status"), changes.get("queue")
            # (A run's counter is its queue's 'queued' one: a retry's status keeps it.)
            if queue is not None or status not in _KEEPS_COUNTER:
                counted = (claimed.id, queue, status, claimed.owner, claimed.attempts)
                self._cursor.execute(queries.COUNT_CHANGE_FENCED, counted)
            sql = queries.update_fenced(tuple(changes))
            self._cursor.execute(sql, (*changes.values(), *fence))
        return bool(self._conn.changes())


class Transaction(SQLiteTx):
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on an error), with the file's mutex and its
    writer gate held: the transaction and its Tx in one object, as it runs once or twice
    per job on a worker's hot path. `max_pause` bounds the waits for the gate."""

    __slots__ = ("_clock", "_file", "_gated", "_max_pause")

    # (No SQLiteTx.__init__: __enter__ gives the Tx its connection, cursor and times.)
    def __init__(self, file: QueueFile, clock: Callable[[], float], max_pause: float) -> None:
        self._file = file
        self._clock = clock
        self._max_pause = max_pause
        self._gated = False

    def __enter__(self) -> Tx:
        file = self._file
        file.mutex.acquire()
        try:
            self._conn, self._cursor = file.session()
            self._gated = file.gate.enter(self._max_pause, file.busy_timeout)
            self._cursor.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            if self._gated:
                file.gate.leave()
            file.mutex.release()
            if isinstance(exc, apsw.Error | Busy):
                raise file.translate(exc) from exc
            raise
        self.now = self._clock()
        self.mono = time.monotonic()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        file = self._file
        try:
            if kind is None:
                if not file.in_place(conn):  # nothing goes into a file no longer in use
                    conn.execute("ROLLBACK")
                    raise file.abandon(conn)
                try:
                    self._cursor.execute("COMMIT")
                except apsw.Error as error:
                    if not conn.get_autocommit():
                        conn.execute("ROLLBACK")
                    raise file.translate(error) from error
            else:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                if isinstance(exc, apsw.Error):
                    raise file.translate(exc) from exc
        finally:
            try:
                if self._gated:
                    file.gate.leave()
            finally:
                file.mutex.release()
