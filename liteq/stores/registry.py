"""The workers' registry and their counts of finished jobs: a small primitive of its own.

Each store holds one `Registry` (MemoryStore's, `sqlite/registry.py`, `postgres/registry.py`);
a backend writes four statements (`RegistryWrite`) and three reads, and the rules stay here,
once:

- A beat, in one write: the worker's row, its finished counts added to the minute of the
  store's clock and to its queues' totals (queue by queue, in name order, so that two beats
  take the same rows in the same order), and what is past keeping forgotten: counts older
  than `STATS_MINUTES`, rows of workers silent for `SILENT_LEASES` leases.
- `workers()` lists those that beat within their lease, oldest first (started_at, owner);
  `throughput()` lists counts by minute, then queue.
- A job finished outside any worker (resolve_wait_async, a rescue that counts a death) is
  counted by a beat of no worker (`NO_WORKER`), whose update of the workers' rows matches
  none.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Final

from liteq.errors import LiteqError
from liteq.stores.contract import Finished, MinuteCount, PoolInfo, WorkerInfo, finished_of

log = logging.getLogger("liteq.store")

#: How long finished counts are kept: a day, by the minute.
STATS_MINUTES: Final = 24 * 60
#: A worker silent for this many leases is forgotten (it is listed only within one).
SILENT_LEASES: Final = 3
#: The owner of a beat that only counts finished jobs: no worker's (theirs are never empty).
NO_WORKER: Final = ""
#: A supervisor's autoscaled pools are listed while it reported them within this many
#: seconds (it reports at each decision and every few seconds); rows silent for
#: SILENT_LEASES times as long (a supervisor killed) are forgotten at the next report.
POOL_LEASE: Final = 30.0
#: The columns of the pools' rows in the SQL stores: PoolInfo's fields, by name.
POOL_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(PoolInfo))


class RegistryWrite(abc.ABC):
    """The statements of one beat, inside one write of the backend."""

    @abc.abstractmethod
    def beat(
        self,
        owner: str,
        now: float,
        jobs_done: int,
        current_job: int | None,
        rss: int | None,
        in_flight: int,
    ) -> None:
        """Set the worker's beat_at, jobs_done, current_job, rss and in_flight (no row:
        nothing)."""

    @abc.abstractmethod
    def count(self, minute: int, queue: str, completed: int, failed: int) -> None:
        """Add to the queue's counts of this minute and to its totals."""

    @abc.abstractmethod
    def forget(self, before_minute: int, now: float) -> None:
        """Delete the counts of minutes before `before_minute`, and the rows of workers
        whose beat_at + SILENT_LEASES * lease is before `now`."""


class Registry(abc.ABC):
    """Live workers and the counts of what finished (see the module's rules)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    # -- a backend's primitives ---------------------------------------------------------
    @abc.abstractmethod
    def register(self, info: WorkerInfo) -> None:
        """Record a worker that starts (replacing a row of the same owner)."""

    @abc.abstractmethod
    def unregister(self, owner: str) -> None:
        """Forget a worker that stops."""

    @abc.abstractmethod
    def totals(self) -> Finished:
        """Per queue, every job completed and attempt failed that was counted."""

    @abc.abstractmethod
    def _rows(self) -> list[WorkerInfo]:
        """Every registered worker's row, in any order."""

    @abc.abstractmethod
    def _minutes(self, since_minute: int) -> list[MinuteCount]:
        """The counts of each minute from this one on (epoch seconds // 60), in any order."""

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[RegistryWrite]:
        """One write transaction of the registry, committed on a clean exit."""

    @abc.abstractmethod
    def _pool_rows(self) -> list[PoolInfo]:
        """Every autoscaled pool's row, in any order."""

    @abc.abstractmethod
    def _write_pools(self, supervisor: str, rows: Sequence[PoolInfo], forget_before: float) -> None:
        """In one write: delete the rows of `supervisor` and those whose beat_at is before
        `forget_before`, then insert `rows`."""

    # -- the rules ------------------------------------------------------------------------
    def beat(
        self,
        owner: str,
        *,
        jobs_done: int,
        current_job: int | None,
        finished: Finished,
        rss: int | None = None,
        in_flight: int = 0,
    ) -> None:
        """A worker is alive: its count of jobs, the job it runs now, the jobs it finished
        since its last beat, per queue (completed, failed), the memory it uses, and how
        many jobs it has in flight."""
        now = self.clock()
        minute = int(now // 60)
        with self._writing() as w:
            w.beat(owner, now, jobs_done, current_job, rss, in_flight)
            for queue, (completed, failed) in sorted(finished.items()):
                w.count(minute, queue, completed, failed)
            w.forget(minute - STATS_MINUTES, now)

    def workers(self) -> list[WorkerInfo]:
        """The registered workers that beat within their lease, oldest first."""
        now = self.clock()
        return sorted(
            (w for w in self._rows() if w.beat_at + w.lease >= now),
            key=lambda w: (w.started_at, w.owner),
        )

    def throughput(self, since: float) -> list[MinuteCount]:
        """The counts of each minute since `since` (epoch seconds), by minute then queue."""
        return sorted(self._minutes(int(since // 60)), key=lambda m: (m.minute, m.queue))

    def finished(self, since: float) -> Finished:
        """Per queue, (completed, failed) since `since`, by the minute."""
        return finished_of(self.throughput(since), since)

    def report_pools(self, supervisor: str, pools: Sequence[PoolInfo]) -> None:
        """A supervisor's autoscaled pools now (none: it stops), stamped with the store's
        clock, in place of what it reported before."""
        now = self.clock()
        rows = [dataclasses.replace(p, supervisor=supervisor, beat_at=now) for p in pools]
        self._write_pools(supervisor, rows, now - SILENT_LEASES * POOL_LEASE)

    def pools(self) -> list[PoolInfo]:
        """The autoscaled pools reported within POOL_LEASE, by host, supervisor, name."""
        now = self.clock()
        return sorted(
            (p for p in self._pool_rows() if p.beat_at + POOL_LEASE >= now),
            key=lambda p: (p.host, p.pid, p.supervisor, p.name),
        )

    def count_outside_worker(self, queue: str, *, completed: int, failed: int) -> None:
        """Count a job finished outside a worker (resolve_wait_async) where it finishes.

        Workers add what they finish to the per-minute counts and the totals at their
        beats; a job resolved in a web handler has no worker to tell for it, and would be
        missing from "completed in the last hour" while the table counts it. The store
        tells instead, by a beat of no worker. After the commit: a count that cannot be
        written is logged, never turned into an error of a resolve that was done.
        """
        try:
            self.beat(
                NO_WORKER, jobs_done=0, current_job=None, finished={queue: (completed, failed)}
            )
        except LiteqError as exc:
            log.warning("job of queue %s finished, but counting it failed: %s", queue, exc)
