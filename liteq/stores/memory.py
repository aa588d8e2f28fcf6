"""MemoryStore: an in-process store for tests and `do_later`. Same semantics as SQLiteStore."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from liteq.errors import LiteqError
from liteq.managed import COALESCE_HOLDING, Record, Status, evolve
from liteq.stores._base import BaseStore
from liteq.stores._contract import StatusHook, Tx, start_run


class _MemoryTx(Tx):
    def __init__(self, store: MemoryStore, now: float) -> None:
        super().__init__(now, time.monotonic())
        self._store = store
        self._undo: dict[int, Record | None] = {}

    def _touch(self, job_id: int) -> None:
        if job_id not in self._undo:
            self._undo[job_id] = self._store._rows.get(job_id)

    def _put(self, record: Record | None, job_id: int) -> None:
        rows, holders = self._store._rows, self._store._holders
        old = rows.pop(job_id, None)
        if (
            old is not None
            and old.coalesce_id is not None
            and holders.get(old.coalesce_id) == job_id
        ):
            del holders[old.coalesce_id]
        if record is not None:
            rows[job_id] = record
            if record.coalesce_id is not None and record.status in COALESCE_HOLDING:
                if holders.get(record.coalesce_id, job_id) != job_id:
                    raise LiteqError(f"coalesce id {record.coalesce_id!r} is held twice")
                holders[record.coalesce_id] = job_id

    def get(self, job_id: int) -> Record | None:
        return self._store._rows.get(job_id)

    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        job_id = self._store._holders.get(coalesce_id)
        return None if job_id is None else self._store._rows[job_id]

    def insert(self, record: Record) -> int | None:
        if record.coalesce_id is not None and record.coalesce_id in self._store._holders:
            return None
        job_id = next(self._store._ids)
        self._touch(job_id)
        self._put(dataclasses.replace(record, id=job_id), job_id)
        return job_id

    def update(self, record: Record) -> None:
        self._touch(record.id)
        self._put(dataclasses.replace(record), record.id)

    def delete(self, job_id: int) -> None:
        self._touch(job_id)
        self._put(None, job_id)

    def claim(
        self, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        now = self.now
        due = (
            r
            for r in self._store._due(queues)
            if r.run_at <= now and (r.lock_token is None or (r.lock_until or 0) < now)
        )
        claimed = [
            start_run(evolve(r), now, self.mono, owner, lease, limit > 1)
            for r in heapq.nsmallest(limit, due, key=lambda r: (-r.priority, r.run_at, r.id))
        ]
        for record in claimed:
            self.update(record)
        return claimed

    def rollback(self) -> None:
        for job_id, record in self._undo.items():
            self._put(record, job_id)


class MemoryStore(BaseStore):
    """A store that lives in this process's memory: for tests and `do_later`.

    It checks payloads exactly as SQLiteStore does (an unencodable state is a
    TypeError at enqueue), so tests against it catch what production would.

        store = liteq.MemoryStore()
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
    ) -> None:
        super().__init__(clock=clock, on_status_change=on_status_change)
        self._rows: dict[int, Record] = {}
        self._holders: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Tx]:
        with self._lock:
            tx = _MemoryTx(self, self.clock())
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise

    def _read(self, job_id: int) -> Record | None:
        with self._lock:  # the same lookup a transaction makes, outside one
            return _MemoryTx(self, self.clock()).get(job_id)

    def _read_coalesce(self, coalesce_id: str) -> Record | None:
        with self._lock:
            return _MemoryTx(self, self.clock()).coalesce_holder(coalesce_id)

    def _matching(self, queue: str | None, status: Status | None) -> Iterator[Record]:
        for record in self._rows.values():
            if (queue is None or record.queue == queue) and (
                status is None or record.status is status
            ):
                yield record

    def _count(self, queue: str | None, status: Status | None) -> int:
        with self._lock:
            return sum(1 for _ in self._matching(queue, status))

    def _page(
        self, after_id: int, queue: str | None, status: Status | None, limit: int
    ) -> list[Record]:
        with self._lock:
            found = sorted(
                (r for r in self._matching(queue, status) if r.id > after_id),
                key=lambda r: r.id,
            )
            return found[:limit]

    def _read_active(self) -> list[Record]:
        with self._lock:
            return [
                r for r in self._rows.values() if r.status in (Status.RUNNING, Status.WAIT_ASYNC)
            ]

    def _due(self, queues: Sequence[str] | None) -> Iterator[Record]:
        for record in self._rows.values():
            if record.status is Status.QUEUED and (queues is None or record.queue in queues):
                yield record

    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        with self._lock:
            return min((r.run_at for r in self._due(queues)), default=None)
