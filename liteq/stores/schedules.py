"""The rules of periodic jobs in a store: one job per (schedule, slot), by the database.

A schedule's row (`ScheduleInfo`) holds its last slot, which only moves forward. A slot's
job is inserted in the same write transaction that moves the row's last slot to it, and
only if that conditional write did (`Tx.advance_schedule`): of any number of workers, on
one host or many, that find a slot due, one enqueues its job; the others' writes change
nothing. The worker decides when to look (liteq/worker/schedule.py); this module decides
what a look may do.

- A schedule first seen (no row) starts from now: its latest past slot is recorded as
  done, without a job.
- After downtime, of the slots missed, the latest `catch_up` run, oldest first, each once.
  With `catch_up=0` only a slot found due on time (within ON_TIME seconds of it) runs;
  the latest missed one is recorded as skipped.
- A slot of a paused queue is skipped (recorded, no job): pausing a queue pauses its
  periodic jobs, and resuming it does not bring a burst of old slots.
- A schedule whose spec or time zone changed starts from now, as a new one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from liteq.options import build_record
from liteq.status import Status
from liteq.stores.contract import ScheduleInfo
from liteq.stores.events import listens
from liteq.stores.runs import Runs

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.periodic import Periodic


#: A slot a worker finds due within this many seconds of its time is on time, not missed
#: (what `catch_up=0` still runs): workers look as each slot comes, unless all are busy.
ON_TIME: Final = 60.0


def _info(periodic: Periodic, last_slot: int, seen_at: float) -> ScheduleInfo:
    schedule = periodic.schedule
    return ScheduleInfo(
        periodic.name, schedule.spec, schedule.tz, periodic.queue, last_slot, None, seen_at
    )


class Schedules(Runs):
    """Periodic jobs' side of a store (BaseStore's base, over Runs): the workers declare
    their schedules and enqueue due slots; operators read the rows."""

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule's row, by name (those no worker has any more stay: history)."""
        return self._schedules()

    def declare_schedules(self, periodics: Sequence[Periodic]) -> None:
        """Say, in one write, that a worker has these schedules in its code: each row's
        spec, zone, queue and seen_at are set; a new row, or one whose spec or zone
        changed, starts at its latest past slot (that slot not run)."""
        if not periodics:
            return
        with self._write() as w:
            now = w.tx.now
            for periodic in periodics:
                past = periodic.schedule.latest(now, 0, 1)
                # (no past slot: cron strings that never matched yet; nothing is done)
                start = past[-1] if past else int(now)
                w.tx.declare_schedule(_info(periodic, start, now))

    def run_schedule(self, periodic: Periodic) -> list[ManagedJob]:
        """Enqueue the due slots of a schedule (see this module's rules) in one write;
        return the jobs enqueued: none if another worker has done it, or nothing is due."""
        name = periodic.name
        row = next((r for r in self._schedules() if r.name == name), None)
        if row is None or (row.spec, row.tz) != (periodic.schedule.spec, periodic.schedule.tz):
            self.declare_schedules([periodic])
            return []
        now = self.clock()
        missed = periodic.schedule.latest(now, row.last_slot, periodic.catch_up)
        if not missed:
            return []
        if periodic.queue in self._paused():
            to_run = []
        elif periodic.catch_up:
            to_run = missed[-periodic.catch_up :]
        else:
            to_run = [slot for slot in missed[-1:] if now - slot <= ON_TIME]
        store_listens = self._announcer.listening()
        enqueued: list[ManagedJob] = []
        with self._write() as w:
            tx = w.tx
            if not to_run:  # recorded as done, no job
                tx.advance_schedule(_info(periodic, missed[-1], now))
            for slot in to_run:
                if not tx.advance_schedule(_info(periodic, slot, now)):
                    continue  # another worker enqueued it
                job = periodic.job_for(slot)
                record = build_record(job, periodic.options_for(slot), tx.now)
                job_id = tx.insert(record)
                if job_id is None:  # (no coalesce id: cannot be)
                    raise RuntimeError(f"the job of schedule {name!r} was not inserted")
                record.id = job_id
                tx.schedule_job(name, job_id)
                if store_listens or listens(job):
                    w.events.append((record, Status.UNQUEUED, "enqueued", job))
                enqueued.append(self._announcer.managed(record, job, False, None))
        return enqueued
