"""PostgreSQL's write transaction, and the Tx primitives inside it."""

from __future__ import annotations

import contextlib
import operator
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row

from liteq.errors import StoreError
from liteq.record import COLUMNS_BUT_ID, Changes, Record
from liteq.status import Status
from liteq.stores.contract import ScheduleInfo, Tx

if TYPE_CHECKING:
    from liteq.stores.postgres.link import Link
    from liteq.stores.postgres.queries import Queries

_STATUS = {s.value: s for s in Status}

#: A new row's values, as the INSERT takes them: each column but the id, which the
#: database gives.
new_values: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS_BUT_ID)
#: A row's values as the UPDATE takes them: each column but the id, then the id.
_update_values: Callable[[Record], tuple[Any, ...]] = operator.attrgetter(*COLUMNS_BUT_ID, "id")


def bigints(values: Iterable[int]) -> str:
    """An array of integers as PostgreSQL's text for it, which the statement casts
    (::bigint[]): psycopg adapts a list element by element, at several times the cost."""
    return "{" + ",".join(map(str, values)) + "}"


def record_of(row: Sequence[Any]) -> Record:
    """The Record of a row selected with the statements' {columns}."""
    record = Record(*row)
    record.status = _STATUS[record.status]
    return record


#: An insert, as the statements it runs in turn: each step yields (sql, args) and is sent
#: the first row that statement returned (None: none); it returns the new job's id, the
#: row of the job holding its coalesce id (locked until the transaction ends), or None for
#: a job with no coalesce id that was not inserted. Both PgTx.insert and the async enqueue
#: (aio.py) run it: the rule is written once.
InsertSteps = Generator[tuple[str, Sequence[Any]], tuple[Any, ...] | None, "Inserted"]
Inserted = int | tuple[Any, ...] | None  # (what an insert comes to: see InsertSteps)


def insert_steps(q: Queries, record: Record) -> InsertSteps:
    """Insert a new job; with a coalesce id that a job holds, lock that job instead."""
    values = new_values(record)
    for _ in range(100):
        row = yield q.INSERT, values
        if row is not None:
            return int(row[0])
        if record.coalesce_id is None:
            return None
        # The coalesce id is held. Lock the holder, so that it still holds it when the
        # caller reads it; if it let go meanwhile (completed, deleted), insert again.
        holder = yield q.COALESCE_HOLDER_FOR_UPDATE, (record.coalesce_id,)
        if holder is not None:
            return holder
    raise StoreError(f"coalesce id {record.coalesce_id!r} changed hands a hundred times meanwhile")


def _schedule_values(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule's row as the declare_schedule and advance_schedule statements take it."""
    return {
        "name": info.name,
        "spec": info.spec,
        "tz": info.tz,
        "queue": info.queue,
        "last_slot": info.last_slot,
        "seen_at": info.seen_at,
    }


# UPDATE … RETURNING gives the claimed rows in no order: they are put back in the claim
# order that the `claim` block chose them by.
def _best_first(record: Record) -> tuple[int, float, int]:
    return (-record.priority, record.run_at, record.id)


def claimed_records(rows: Sequence[Sequence[Any]]) -> list[Record]:
    """The Records of the rows a claim returned, best first."""
    records = [record_of(row) for row in rows]
    records.sort(key=_best_first)
    return records


def queue_names(queues: Sequence[str] | None) -> list[str] | None:
    """The queues a claim takes from, each once, as the statements take them (None: all)."""
    return None if queues is None else list(dict.fromkeys(queues))


def alike_args(records: Sequence[Record]) -> dict[str, Any]:
    """queries' insert_alike parameters: the values the rows share, once (the first
    row's), and the two they differ in, as arrays."""
    args = dict(zip(COLUMNS_BUT_ID, new_values(records[0]), strict=True))
    args["job_type"] = [r.job_type for r in records]
    args["payload"] = [r.payload for r in records]
    return args


class PgTx(Tx):
    """The primitives over one cursor, inside a transaction (liteq's own, or an
    application's: see PostgresStore.enqueue's `connection`)."""

    __slots__ = ("_cursor", "_q")

    def __init__(self, cursor: psycopg.Cursor[tuple[Any, ...]], q: Queries, now: float) -> None:
        super().__init__(now, time.monotonic())
        self._cursor = cursor
        self._q = q

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> None:
        """Run a statement of the store's own in this transaction."""
        self._cursor.execute(sql, args)

    def count(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run a statement of the store's own; how many rows it changed."""
        return int(self._cursor.execute(sql, args).rowcount)

    def _one(self, sql: str, args: Sequence[Any] | dict[str, Any]) -> tuple[Any, ...] | None:
        return self._cursor.execute(sql, args).fetchone()

    def declare_schedule(self, info: ScheduleInfo) -> None:
        self._cursor.execute(self._q.DECLARE_SCHEDULE, _schedule_values(info))

    def advance_schedule(self, info: ScheduleInfo) -> bool:
        return self._one(self._q.ADVANCE_SCHEDULE, _schedule_values(info)) is not None

    def schedule_job(self, name: str, job_id: int) -> None:
        self._cursor.execute(self._q.SCHEDULE_JOB, (job_id, name))

    def add_dependencies(self, job_id: int, after: Sequence[tuple[int, bool]]) -> None:
        flags = "{" + ",".join("t" if done else "f" for _, done in after) + "}"
        args = (job_id, bigints(after_id for after_id, _ in after), flags)
        self._cursor.execute(self._q.ADD_DEPENDENCIES, args)

    def dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        rows = self._cursor.execute(self._q.DEPENDENCIES, (job_id,)).fetchall()
        return [(int(after_id), bool(done)) for after_id, done in rows]

    def dependents(self, after_ids: Sequence[int]) -> list[int]:
        rows = self._cursor.execute(self._q.DEPENDENTS, (bigints(after_ids),)).fetchall()
        return [int(row[0]) for row in rows]

    def finish_dependencies(self, after_ids: Sequence[int]) -> list[int]:
        rows = self._cursor.execute(self._q.FINISH_DEPENDENCIES, (bigints(after_ids),)).fetchall()
        return [int(row[0]) for row in rows]

    def get(self, job_id: int) -> Record | None:
        row = self._one(self._q.GET_FOR_UPDATE, (job_id,))
        return None if row is None else record_of(row)

    def get_many(self, job_ids: Sequence[int]) -> dict[int, Record]:
        # One round trip, where a get each held the rows locked first for as many.
        rows = self._cursor.execute(self._q.GET_MANY_FOR_UPDATE, (bigints(job_ids),))
        return {record.id: record for record in map(record_of, rows.fetchall())}

    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        row = self._one(self._q.COALESCE_HOLDER_FOR_UPDATE, (coalesce_id,))
        return None if row is None else record_of(row)

    def insert(self, record: Record) -> int | None:
        steps = insert_steps(self._q, record)
        try:
            sql, args = next(steps)
            while True:
                sql, args = steps.send(self._one(sql, args))
        except StopIteration as done:
            outcome: Inserted = done.value
        return outcome if isinstance(outcome, int) else None

    def insert_many(self, records: Sequence[Record]) -> list[int | None]:
        ids: list[int | None] = [None] * len(records)
        plain = [i for i, r in enumerate(records) if r.coalesce_id is None]
        if len(plain) > 1:
            for i, job_id in zip(
                plain, self._insert_batch([records[i] for i in plain]), strict=True
            ):
                ids[i] = job_id
        elif plain:
            ids[plain[0]] = self.insert(records[plain[0]])
        # Coalesced ones one at a time, in the order of their ids: two batches that share
        # some then wait for each other in the same order, never in a cycle (a deadlock).
        held = sorted(
            (i for i, r in enumerate(records) if r.coalesce_id is not None),
            key=lambda i: records[i].coalesce_id or "",
        )
        for i in held:
            ids[i] = self.insert(records[i])
        return ids

    def insert_alike(self, records: Sequence[Record]) -> list[int]:
        if len(records) < 2:
            return [job_id for job_id in map(self.insert, records) if job_id is not None]
        rows = self._cursor.execute(self._q.INSERT_ALIKE, alike_args(records)).fetchall()
        return sorted(int(row[0]) for row in rows)

    def _insert_batch(self, records: Sequence[Record]) -> list[int]:
        """Insert rows that hold no coalesce id, with one statement; their ids in order."""
        columns = zip(*(new_values(r) for r in records), strict=True)
        arrays = dict(zip(COLUMNS_BUT_ID, map(list, columns), strict=True))
        rows = self._cursor.execute(self._q.INSERT_BATCH, arrays).fetchall()
        return sorted(int(row[0]) for row in rows)

    def update(self, record: Record) -> None:
        self._cursor.execute(self._q.UPDATE, _update_values(record))

    def delete(self, job_id: int) -> None:
        self._cursor.execute(self._q.DELETE, (job_id,))

    def claim(
        self, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        names = queue_names(queues)
        if names == []:
            return []
        now, mono = self.now, self.mono
        args: dict[str, Any] = {
            "now": now,
            "mono": mono,
            "owner": owner,
            "lease_until": now + lease,
            "lease_mono": mono + lease,
            "limit": limit,
        }
        if names is None:
            sql = self._q.CLAIM_ANY
        elif len(names) == 1:
            sql, args["queue"] = self._q.CLAIM_ONE_QUEUE, names[0]
        else:
            sql, args["queues"] = self._q.CLAIM_QUEUES, names
        # (fetchall: one call for the rows, not one per row, on a worker's hot path; in
        # binary, which psycopg loads in half the time of text for these columns)
        return claimed_records(self._cursor.execute(sql, args, binary=True).fetchall())

    def fenced_write_many(self, writes: Sequence[tuple[Record, Changes | None]]) -> list[bool]:
        if len(writes) == 1:  # a worker's steady state
            return [self.fenced_write(*writes[0])]
        # Deletes of one owner's runs go in one statement, fenced on (id, attempts), which
        # takes their rows in id order (a scan of the primary key). Any other writes, one by
        # one (lease renewals, hand-backs, completions that keep their rows), lock theirs in
        # id order first, as an `after=` enqueue locks its parents (get_many): writers of
        # several rows then never wait for each other's rows in a cycle.
        deletes = [c for c, u in writes if u is None and c.owner is not None]
        one_owner = len(deletes) >= 2 and len({c.owner for c in deletes}) == 1
        if not (one_owner and len(deletes) == len(writes)):
            self.get_many([c.id for c, _ in writes])
        if not one_owner:
            return super().fenced_write_many(writes)
        args = {
            "ids": bigints([c.id for c in deletes]),
            "attempts": bigints([c.attempts for c in deletes]),
            "owner": deletes[0].owner,
        }
        cursor = self._cursor.execute(self._q.DELETE_FENCED_MANY, args)
        gone = {row[0] for row in cursor.fetchall()}
        return [
            (claimed.id in gone) if changes is None else self.fenced_write(claimed, changes)
            for claimed, changes in writes
        ]

    def fenced_write(self, claimed: Record, changes: Changes | None) -> bool:
        fence = (claimed.id, claimed.owner, claimed.attempts)
        if changes is None:
            cursor = self._cursor.execute(self._q.DELETE_FENCED, fence)
        else:
            sql = self._q.update_fenced(tuple(changes))
            cursor = self._cursor.execute(sql, (*changes.values(), *fence))
        return cursor.rowcount > 0


class Transaction(PgTx):
    """BEGIN … COMMIT (ROLLBACK on an error) on the link's connection, its mutex held for
    the whole: the transaction and its Tx in one object, as it runs once or twice per job
    on a worker's hot path."""

    __slots__ = ("_clock", "_conn", "_link")

    # (No PgTx.__init__: __enter__ gives the Tx its cursor and times.)
    def __init__(self, link: Link, q: Queries, clock: Callable[[], float]) -> None:
        self._link = link
        self._q = q
        self._clock = clock

    def __enter__(self) -> Tx:
        link = self._link
        link.mutex.acquire()
        try:
            self._conn = conn = link.connection()
            self._cursor = conn.cursor(row_factory=tuple_row)
            self._cursor.execute("BEGIN")
        except BaseException as exc:
            link.mutex.release()
            if isinstance(exc, psycopg.Error):
                raise link.fault(exc) from exc
            raise
        self.now = self._clock()
        self.mono = time.monotonic()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        link = self._link
        try:
            if kind is None:
                try:
                    self._cursor.execute("COMMIT")
                except psycopg.Error as error:
                    self._roll_back()
                    raise link.fault(error, committing=True) from error
            else:
                self._roll_back()
                if isinstance(exc, psycopg.Error):
                    raise link.fault(exc) from exc
        finally:
            link.mutex.release()

    def _roll_back(self) -> None:
        conn = self._conn
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            # (On a broken connection the server rolls back as it ends the session.)
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
