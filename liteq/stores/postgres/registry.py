"""PostgresStore's workers' registry and counts: tables of its schema (see registry)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from liteq.stores.contract import Finished, MinuteCount, PoolInfo, WorkerInfo
from liteq.stores.postgres.link import Link
from liteq.stores.postgres.queries import Queries
from liteq.stores.postgres.transaction import PgTx, Transaction
from liteq.stores.registry import SILENT_LEASES, Registry, RegistryWrite
from liteq.stores.sqlshared import worker_of, worker_values


class PgRegistry(Registry):
    """The registry in `workers`, `stats` and `queues` of one schema."""

    def __init__(self, link: Link, q: Queries, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._link = link
        self._q = q

    def register(self, info: WorkerInfo) -> None:
        with self._link.using() as conn:
            conn.execute(self._q.REGISTER, worker_values(info))

    def unregister(self, owner: str) -> None:
        with self._link.using() as conn:
            conn.execute(self._q.UNREGISTER, (owner,))

    def totals(self) -> Finished:
        return {name: (int(c), int(f)) for name, c, f in self._rows_of(self._q.TOTALS)}

    def _rows(self) -> list[WorkerInfo]:
        return [worker_of(row) for row in self._rows_of(self._q.WORKERS)]

    def _minutes(self, since_minute: int) -> list[MinuteCount]:
        rows = self._rows_of(self._q.THROUGHPUT, (since_minute,))
        return [MinuteCount(int(m), q, int(c), int(f)) for m, q, c, f in rows]

    def _rows_of(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._link.using() as conn:
            return conn.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[RegistryWrite]:
        with Transaction(self._link, self._q, self.clock) as tx:
            assert isinstance(tx, PgTx)  # noqa: S101 - this store's own
            yield _Beat(tx, self._q)

    def _pool_rows(self) -> list[PoolInfo]:
        return [
            PoolInfo(sup, name, host, int(pid), int(n), int(lo), int(hi), *rest)
            for sup, name, host, pid, n, lo, hi, *rest in self._rows_of(self._q.POOLS)
        ]

    def _write_pools(self, supervisor: str, rows: Sequence[PoolInfo], forget_before: float) -> None:
        with Transaction(self._link, self._q, self.clock) as tx:
            assert isinstance(tx, PgTx)  # noqa: S101 - this store's own
            tx.execute(self._q.FORGET_POOLS, (supervisor, forget_before))
            for row in rows:
                tx.execute(self._q.REPORT_POOL, dataclasses.asdict(row))


class _Beat(RegistryWrite):
    __slots__ = ("_q", "_tx")

    def __init__(self, tx: PgTx, q: Queries) -> None:
        self._tx = tx
        self._q = q

    def beat(
        self,
        owner: str,
        now: float,
        jobs_done: int,
        current_job: int | None,
        rss: int | None,
        in_flight: int,
    ) -> None:
        self._tx.execute(self._q.BEAT, (now, jobs_done, current_job, rss, in_flight, owner))

    def count(self, minute: int, queue: str, completed: int, failed: int) -> None:
        self._tx.execute(self._q.COUNT_FINISHED, (minute, queue, completed, failed))
        self._tx.execute(self._q.COUNT_TOTAL, (queue, completed, failed))

    def forget(self, before_minute: int, now: float) -> None:
        self._tx.execute(self._q.FORGET_OLD_STATS, (before_minute,))
        self._tx.execute(self._q.FORGET_SILENT_WORKERS, (SILENT_LEASES, now))
