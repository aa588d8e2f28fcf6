"""MemoryStore: an in-process store for tests and `do_later`. Same semantics as SQLiteStore."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from liteq.errors import LiteqError
from liteq.record import Record, due_since, evolve
from liteq.status import COALESCE_HOLDING, Status
from liteq.stores.base import BaseStore
from liteq.stores.contract import (
    WAITS_FOR_ITS_TYPE,
    CountDrift,
    Finished,
    JobQuery,
    MinuteCount,
    PoolInfo,
    QueueCount,
    ScheduleInfo,
    Tx,
    WorkerInfo,
    start_run,
)
from liteq.stores.events import StatusHook
from liteq.stores.registry import SILENT_LEASES, Registry, RegistryWrite


def claim_order(record: Record) -> tuple[int, float, int]:
    """The claim order (see Tx.claim), as a key: the smallest key is claimed first."""
    return (-record.priority, record.run_at, record.id)


class _MemoryTx(Tx):
    __slots__ = ("_store", "_undo", "_undo_dependencies", "_undo_schedules")

    def __init__(self, store: MemoryStore, now: float) -> None:
        super().__init__(now, time.monotonic())
        self._store = store
        self._undo: dict[int, Record | None] = {}
        self._undo_schedules: dict[str, ScheduleInfo | None] = {}
        self._undo_dependencies: dict[int, dict[int, bool]] | None = None

    def _dependencies_to_change(self) -> dict[int, dict[int, bool]]:
        deps = self._store.dependencies_of
        if self._undo_dependencies is None:  # (a copy to roll back to: they are few)
            self._undo_dependencies = {job_id: dict(d) for job_id, d in deps.items()}
        return deps

    def add_dependencies(self, job_id: int, after: Sequence[tuple[int, bool]]) -> None:
        self._dependencies_to_change().setdefault(job_id, {}).update(after)

    def dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        return sorted(self._store.dependencies_of.get(job_id, {}).items())

    def dependents(self, after_ids: Sequence[int]) -> list[int]:
        wanted = set(after_ids)
        return [
            job_id
            for job_id, deps in self._store.dependencies_of.items()
            for after_id, done in deps.items()
            if after_id in wanted and not done
        ]

    def finish_dependencies(self, after_ids: Sequence[int]) -> list[int]:
        dependents = self.dependents(after_ids)
        if dependents:
            deps = self._dependencies_to_change()
            wanted = set(after_ids)
            for job_id in dependents:
                for after_id in wanted & deps[job_id].keys():
                    deps[job_id][after_id] = True
        return dependents

    def _put_schedule(self, info: ScheduleInfo) -> None:
        schedules = self._store.schedules_by_name
        if info.name not in self._undo_schedules:
            self._undo_schedules[info.name] = schedules.get(info.name)
        schedules[info.name] = info

    def declare_schedule(self, info: ScheduleInfo) -> None:
        old = self._store.schedules_by_name.get(info.name)
        if old is not None:
            same = (old.spec, old.tz) == (info.spec, info.tz)
            last_slot = old.last_slot if same else max(old.last_slot, info.last_slot)
            info = dataclasses.replace(info, last_slot=last_slot, last_job=old.last_job)
        self._put_schedule(info)

    def advance_schedule(self, info: ScheduleInfo) -> bool:
        old = self._store.schedules_by_name.get(info.name)
        if old is not None:
            if old.last_slot >= info.last_slot:
                return False
            info = dataclasses.replace(old, last_slot=info.last_slot, last_job=None)
        self._put_schedule(info)
        return True

    def schedule_job(self, name: str, job_id: int) -> None:
        old = self._store.schedules_by_name.get(name)
        if old is not None:
            self._put_schedule(dataclasses.replace(old, last_job=job_id))

    def _touch(self, job_id: int) -> None:
        if job_id not in self._undo:
            self._undo[job_id] = self._store.rows.get(job_id)

    def get(self, job_id: int) -> Record | None:
        return self._store.rows.get(job_id)

    def coalesce_holder(self, coalesce_id: str) -> Record | None:
        job_id = self._store.holders.get(coalesce_id)
        return None if job_id is None else self._store.rows[job_id]

    def insert(self, record: Record) -> int | None:
        if record.coalesce_id is not None and record.coalesce_id in self._store.holders:
            return None
        job_id = self._store.next_id()
        self._touch(job_id)
        self._store.put(dataclasses.replace(record, id=job_id), job_id)
        return job_id

    def update(self, record: Record) -> None:
        self._touch(record.id)
        self._store.put(dataclasses.replace(record), record.id)

    def delete(self, job_id: int) -> None:
        self._touch(job_id)
        self._store.put(None, job_id)

    def claim(
        self, queues: Sequence[str] | None, owner: str, lease: float, limit: int
    ) -> list[Record]:
        now = self.now
        due = (
            r
            for r in self._store.queued(queues)
            if r.run_at <= now and (r.lock_token is None or (r.lock_until or 0) < now)
        )
        paused = self._store.paused_queues
        if paused:
            due = (r for r in due if r.queue not in paused)
        best = heapq.nsmallest(limit, due, key=claim_order)
        claimed = [start_run(evolve(r), now, self.mono, owner, lease) for r in best]
        for record in claimed:
            self.update(record)
        return claimed

    def rollback(self) -> None:
        for job_id, record in self._undo.items():
            self._store.put(record, job_id)
        if self._undo_dependencies is not None:
            self._store.dependencies_of = self._undo_dependencies
        schedules = self._store.schedules_by_name
        for name, info in self._undo_schedules.items():
            if info is None:
                schedules.pop(name, None)
            else:
                schedules[name] = info


class MemoryStore(BaseStore):
    """A store that lives in this process's memory: for tests and `do_later`.

    It checks payloads exactly as SQLiteStore does (an unencodable state is a
    TypeError at enqueue), so tests against it catch what production would.

        store = liteq.MemoryStore()
    """

    in_process = True

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_status_change: StatusHook | None = None,
    ) -> None:
        super().__init__(
            registry=MemoryRegistry(clock), clock=clock, on_status_change=on_status_change
        )
        self.rows: dict[int, Record] = {}
        #: Jobs per (queue, status), kept by put() as the SQL stores' triggers keep theirs.
        self.counts: collections.Counter[tuple[str, Status]] = collections.Counter()
        self.holders: dict[str, int] = {}  # coalesce id -> the job holding it
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.paused_queues: set[str] = set()
        self.schedules_by_name: dict[str, ScheduleInfo] = {}
        #: Per job, what it runs after (`after=`): {after_id: done}.
        self.dependencies_of: dict[int, dict[int, bool]] = {}

    def next_id(self) -> int:
        """A new job id, never used before."""
        return next(self._ids)

    def put(self, record: Record | None, job_id: int) -> None:
        """Store `record` as the row `job_id` (None: delete it), keeping `holders` true."""
        old = self.rows.pop(job_id, None)
        if old is not None:
            self.counts[old.queue, old.status] -= 1
        if (
            old is not None
            and old.coalesce_id is not None
            and self.holders.get(old.coalesce_id) == job_id
        ):
            del self.holders[old.coalesce_id]
        if record is not None:
            self.rows[job_id] = record
            self.counts[record.queue, record.status] += 1
            if record.coalesce_id is not None and record.status in COALESCE_HOLDING:
                if self.holders.get(record.coalesce_id, job_id) != job_id:
                    raise LiteqError(f"coalesce id {record.coalesce_id!r} is held twice")
                self.holders[record.coalesce_id] = job_id

    def queued(self, queues: Sequence[str] | None) -> Iterator[Record]:
        """The QUEUED rows of these queues (None: all)."""
        for record in self.rows.values():
            if record.status is Status.QUEUED and (queues is None or record.queue in queues):
                yield record

    # -- primitives ----------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, prompt: bool = False) -> Iterator[Tx]:
        with self._lock:
            tx = _MemoryTx(self, self.clock())
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise

    def _read(self, job_id: int) -> Record | None:
        with self._lock:
            return self.rows.get(job_id)

    def _read_coalesce(self, coalesce_id: str) -> Record | None:
        with self._lock:
            job_id = self.holders.get(coalesce_id)
            return None if job_id is None else self.rows[job_id]

    def _matching(self, queue: str | None, status: Status | None) -> Iterator[Record]:
        for record in self.rows.values():
            if (queue is None or record.queue == queue) and (
                status is None or record.status is status
            ):
                yield record

    def _count(self, queue: str | None, status: Status | None) -> int:
        with self._lock:
            return sum(
                n
                for (q, st), n in self.counts.items()
                if (queue is None or q == queue) and (status is None or st is status)
            )

    def _search(self, query: JobQuery) -> list[Record]:
        with self._lock:
            found = [
                r
                for r in self._matching(query.queue, query.status)
                if (r.id < query.before if query.before is not None else r.id > query.after)
                and (query.job_type is None or r.job_type == query.job_type)
                and (query.error_contains is None or query.error_contains in (r.error or ""))
                and (
                    query.finished_since is None
                    or (r.finished_at is not None and r.finished_at >= query.finished_since)
                )
            ]
        found.sort(key=lambda r: r.id, reverse=query.before is not None)
        return found[: query.limit]

    def _summary(self, now: float) -> list[QueueCount]:
        oldest: dict[str, float] = {}
        due: collections.Counter[str] = collections.Counter()
        unknown: collections.Counter[str] = collections.Counter()
        with self._lock:
            counts = sorted((key, n) for key, n in self.counts.items() if n)
            for r in self.queued(None):
                if r.run_at <= now:
                    since = due_since(r.run_at, r.created_at)
                    oldest[r.queue] = min(since, oldest.get(r.queue, since))
                    due[r.queue] += 1
                if (r.error or "").startswith(WAITS_FOR_ITS_TYPE):
                    unknown[r.queue] += 1
        return [
            QueueCount(queue, status, n, oldest.get(queue), due[queue], unknown[queue])
            if status is Status.QUEUED
            else QueueCount(queue, status, n)
            for (queue, status), n in counts
        ]

    def _check_counts(self, repair: bool) -> list[CountDrift]:
        with self._lock:
            scanned = collections.Counter((r.queue, r.status) for r in self.rows.values())
            drift = [
                CountDrift(queue, status.value, self.counts[queue, status], scanned[queue, status])
                for queue, status in sorted(scanned.keys() | self.counts.keys())
                if self.counts[queue, status] != scanned[queue, status]
            ]
            if repair:
                self.counts = scanned
        return drift

    def _purge(self, status: Status, queue: str | None, before: float | None, limit: int) -> int:
        with self._transaction() as tx:
            gone = [
                r.id
                for r in self._matching(queue, status)
                if before is None or (r.finished_at is not None and r.finished_at < before)
            ][:limit]
            for job_id in gone:
                tx.delete(job_id)
        return len(gone)

    def _dependencies(self, job_id: int) -> list[tuple[int, bool]]:
        with self._lock:
            return sorted(self.dependencies_of.get(job_id, {}).items())

    def _expire_results(self, now: float, limit: int) -> int:
        with self._transaction() as tx:
            expired = [
                r
                for r in self.rows.values()
                if r.status is Status.COMPLETED and r.expires_at is not None and r.expires_at < now
            ][:limit]
            for record in expired:
                if record.delete_on_complete:
                    tx.delete(record.id)
                else:
                    tx.update(evolve(record, result=None, expires_at=None))
            gone = [j for j in self.dependencies_of if j not in self.rows][:limit]
            if gone:
                assert isinstance(tx, _MemoryTx)  # noqa: S101 - this store's own
                deps = tx._dependencies_to_change()
                for job_id in gone:
                    del deps[job_id]
        return len(expired)

    def _read_active(self) -> list[Record]:
        with self._lock:
            return [
                r for r in self.rows.values() if r.status in (Status.RUNNING, Status.WAIT_ASYNC)
            ]

    def _next_run_at(self, queues: Sequence[str] | None) -> float | None:
        with self._lock:
            return min(
                (r.run_at for r in self.queued(queues) if r.queue not in self.paused_queues),
                default=None,
            )

    def _schedules(self) -> list[ScheduleInfo]:
        with self._lock:
            return [self.schedules_by_name[n] for n in sorted(self.schedules_by_name)]

    def _set_paused(self, queue: str, paused: bool) -> None:
        with self._lock:
            (self.paused_queues.add if paused else self.paused_queues.discard)(queue)

    def _paused(self) -> set[str]:
        with self._lock:
            return set(self.paused_queues)


class MemoryRegistry(Registry):
    """MemoryStore's workers and counts: dicts under a lock of their own."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._lock = threading.Lock()
        self._tables = _RegistryTables()
        self._pools: dict[tuple[str, str], PoolInfo] = {}

    def register(self, info: WorkerInfo) -> None:
        with self._lock:
            self._tables.workers[info.owner] = info

    def unregister(self, owner: str) -> None:
        with self._lock:
            self._tables.workers.pop(owner, None)

    def totals(self) -> Finished:
        with self._lock:
            return dict(self._tables.totals)

    def _rows(self) -> list[WorkerInfo]:
        with self._lock:
            return list(self._tables.workers.values())

    def _minutes(self, since_minute: int) -> list[MinuteCount]:
        with self._lock:
            return [
                MinuteCount(minute, queue, completed, failed)
                for (minute, queue), (completed, failed) in self._tables.stats.items()
                if minute >= since_minute
            ]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[RegistryWrite]:
        with self._lock:  # (a write is the lock held: nothing to roll back)
            yield self._tables

    def _pool_rows(self) -> list[PoolInfo]:
        with self._lock:
            return list(self._pools.values())

    def _write_pools(self, supervisor: str, rows: Sequence[PoolInfo], forget_before: float) -> None:
        with self._lock:
            for key, row in list(self._pools.items()):
                if row.supervisor == supervisor or row.beat_at < forget_before:
                    del self._pools[key]
            self._pools.update({(row.supervisor, row.name): row for row in rows})


class _RegistryTables(RegistryWrite):
    """The registry's rows, and the statements of a beat on them."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerInfo] = {}
        self.stats: dict[tuple[int, str], tuple[int, int]] = {}
        self.totals: Finished = {}

    def beat(
        self,
        owner: str,
        now: float,
        jobs_done: int,
        current_job: int | None,
        rss: int | None,
        in_flight: int,
    ) -> None:
        info = self.workers.get(owner)
        if info is not None:
            self.workers[owner] = dataclasses.replace(
                info,
                beat_at=now,
                jobs_done=jobs_done,
                current_job=current_job,
                rss=rss,
                in_flight=in_flight,
            )

    def count(self, minute: int, queue: str, completed: int, failed: int) -> None:
        had = self.stats.get((minute, queue), (0, 0))
        self.stats[minute, queue] = (had[0] + completed, had[1] + failed)
        had = self.totals.get(queue, (0, 0))
        self.totals[queue] = (had[0] + completed, had[1] + failed)

    def forget(self, before_minute: int, now: float) -> None:
        for key in [k for k in self.stats if k[0] < before_minute]:
            del self.stats[key]
        silent = [o for o, w in self.workers.items() if w.beat_at + SILENT_LEASES * w.lease < now]
        for owner in silent:
            del self.workers[owner]
