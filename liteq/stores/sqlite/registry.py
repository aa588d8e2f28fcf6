"""SQLiteStore's workers' registry and counts: tables of the queue file (see registry)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from liteq.stores.contract import Finished, MinuteCount, PoolInfo, WorkerInfo
from liteq.stores.registry import SILENT_LEASES, Registry, RegistryWrite
from liteq.stores.sqlite import queries
from liteq.stores.sqlite.gate import PATIENT, PROMPT
from liteq.stores.sqlite.transaction import Transaction
from liteq.stores.sqlshared import worker_of, worker_values

if TYPE_CHECKING:
    import apsw

    from liteq.stores.sqlite.file import QueueFile


class SQLiteRegistry(Registry):
    """The registry in `liteq_workers`, `liteq_stats` and `liteq_queues` of one file."""

    def __init__(self, file: QueueFile, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._file = file

    def register(self, info: WorkerInfo) -> None:
        with Transaction(self._file, self.clock, PROMPT):
            self._file.session()[0].execute(queries.REGISTER, worker_values(info))

    def unregister(self, owner: str) -> None:
        with Transaction(self._file, self.clock, PATIENT):
            self._file.session()[0].execute(queries.UNREGISTER, (owner,))

    def totals(self) -> Finished:
        with self._file.reading() as conn:
            return {name: (done, failed) for name, done, failed in conn.execute(queries.TOTALS)}

    def _rows(self) -> list[WorkerInfo]:
        with self._file.reading() as conn:
            return [worker_of(row) for row in conn.execute(queries.WORKERS)]

    def _minutes(self, since_minute: int) -> list[MinuteCount]:
        with self._file.reading() as conn:
            return [MinuteCount(*row) for row in conn.execute(queries.THROUGHPUT, (since_minute,))]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[RegistryWrite]:
        with Transaction(self._file, self.clock, PATIENT):
            yield _Beat(self._file.session()[0])

    def _pool_rows(self) -> list[PoolInfo]:
        with self._file.reading() as conn:
            return [PoolInfo(*row) for row in conn.execute(queries.POOLS)]

    def _write_pools(self, supervisor: str, rows: Sequence[PoolInfo], forget_before: float) -> None:
        with Transaction(self._file, self.clock, PATIENT):
            conn = self._file.session()[0]
            conn.execute(queries.FORGET_POOLS, (supervisor, forget_before))
            for row in rows:
                conn.execute(queries.REPORT_POOL, dataclasses.asdict(row))


class _Beat(RegistryWrite):
    __slots__ = ("_conn",)

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    def beat(
        self,
        owner: str,
        now: float,
        jobs_done: int,
        current_job: int | None,
        rss: int | None,
        in_flight: int,
    ) -> None:
        self._conn.execute(queries.BEAT, (now, jobs_done, current_job, rss, in_flight, owner))

    def count(self, minute: int, queue: str, completed: int, failed: int) -> None:
        self._conn.execute(queries.COUNT_FINISHED, (minute, queue, completed, failed))
        self._conn.execute(queries.COUNT_TOTAL, (queue, completed, failed))

    def forget(self, before_minute: int, now: float) -> None:
        self._conn.execute(queries.FORGET_OLD_STATS, (before_minute,))
        self._conn.execute(queries.FORGET_SILENT_WORKERS, (SILENT_LEASES, now))
